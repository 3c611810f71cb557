"""Metrics after a scripted run against the chaos stub: exact counts read from the registry,
computed here independently of the engine (the stub counts whitespace words as tokens)."""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from resources_pool import opened

from engine.compile import CompiledPipeline, compile_pipeline
from engine.observe.metrics import Metrics, fallback_hops
from engine.providers.stub import StubProvider
from engine.providers.stub_config import StubConfig, words
from engine.registry import Registry
from engine.results import RunResult, StageEvent
from engine.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
PRICES = {"smart": (2.0, 8.0), "cheap": (0.5, 1.5)}  # USD per 1M input, output tokens


@pytest.fixture
async def stub() -> AsyncIterator[StubProvider]:
    async with StubProvider(StubConfig(seed=1)) as provider:
        yield provider


class FakeClock:
    """Breakers read it: time stands still, so an open breaker stays open."""

    now = 1000.0

    def __call__(self) -> float:
        return self.now


def build(stub: StubProvider, breaker: str = "{}") -> CompiledPipeline:
    tiers = "\n".join(
        f'  {name}: {{model: openai/{name}, api_base: "{stub.base_url}", api_key: stub, '
        f"timeout: 2s, price: {{input: {i}, output: {o}}}}}"
        for name, (i, o) in PRICES.items())
    text = f"""\
version: 1
name: shop
models:
{tiers}
defaults: {{timeout: 10s, retry: {{attempts: 1}}, breaker: {breaker}}}
resources:
  responses: {{type: cache, backend: memory}}
stages:
  lookup:
    type: cache
    with: {{resource: responses, key: "{{{{ input.q }}}}", mode: exact}}
  answer:
    type: generate
    needs: [lookup]
    with:
      models: [smart, cheap]
      messages: [{{role: user, content: "{{{{ input.q }}}}"}}]
output: "{{{{ stages.answer.output.text }}}}"
"""
    return compile_pipeline(parse_spec(text), Registry.from_entry_points(),
                            resources=opened(clock=FakeClock()))


async def run_all(pipeline: CompiledPipeline, metrics: Metrics, questions: list[str]
                  ) -> list[RunResult]:
    """One record at a time, each fed to `observe`, as the run command's sink does."""
    results = []
    for index, q in enumerate(questions):
        record = {"q": q, "user": "user-4711"}
        result = await pipeline.run(record, index, f"rec-{index}")
        await pipeline.resources.settle()  # the cache stores in the background
        metrics.observe(pipeline.name, record, result)
        results.append(result)
    return results


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def usage(q: str) -> tuple[int, int]:
    """The stub's token counts for a one-message prompt `q` answered by its echo."""
    return words(q), words("echo: " + q)


INVOICE = "where is my invoice"
PASSWORD = "please reset my password now"
BROKEN = "this one fails everywhere"


@pytest.fixture
async def scripted(stub: StubProvider) -> tuple[Metrics, list[RunResult]]:
    """A miss answered by smart; the same question again (an exact hit); a 500 on smart that
    falls back to cheap; a 429 on smart then a 500 on cheap (the record errors)."""
    pipeline = build(stub)
    metrics = Metrics()
    metrics.watch_breakers(pipeline.resources)
    stub.plan("smart", ["ok", "500", "429"])
    stub.plan("cheap", ["ok", "500"])
    results = await run_all(pipeline, metrics, [INVOICE, INVOICE, PASSWORD, BROKEN])
    assert [r.status for r in results] == ["ok", "finished", "ok", "error"]
    return metrics, results


async def test_requests_cache_and_errors_are_counted_exactly(
        scripted: tuple[Metrics, list[RunResult]]) -> None:
    metrics, results = scripted
    for status, count in (("ok", 2), ("finished", 1), ("error", 1)):
        assert value(metrics, "engine_requests_total", pipeline="shop", status=status) == count
    assert value(metrics, "engine_cache_requests_total", pipeline="shop", outcome="miss") == 3
    assert value(metrics, "engine_cache_requests_total", pipeline="shop", outcome="exact") == 1
    assert value(metrics, "engine_errors_total", pipeline="shop", type="StageError") == 1
    durations = sum(r.duration for r in results if r.status == "ok")
    assert value(metrics, "engine_request_duration_seconds_sum", pipeline="shop",
                 status="ok") == pytest.approx(durations)


async def test_fallbacks_are_counted_by_hop_and_reason(
        scripted: tuple[Metrics, list[RunResult]]) -> None:
    metrics, _ = scripted
    hop = {"pipeline": "shop", "from": "smart", "to": "cheap"}
    assert value(metrics, "engine_fallbacks_total", **hop, reason="server") == 1
    assert value(metrics, "engine_fallbacks_total", **hop, reason="rate_limit") == 1
    assert value(metrics, "engine_fallbacks_total", **hop, reason="timeout") == 0


async def test_tokens_and_cost_match_the_stub_s_usage(
        scripted: tuple[Metrics, list[RunResult]]) -> None:
    metrics, _ = scripted
    for tier, q in (("smart", INVOICE), ("cheap", PASSWORD)):
        model, (inp, out) = f"openai/{tier}", usage(q)
        assert value(metrics, "engine_tokens_total", model=model, type="input") == inp
        assert value(metrics, "engine_tokens_total", model=model, type="output") == out
        price_in, price_out = PRICES[tier]
        assert value(metrics, "engine_cost_usd_total", pipeline="shop", model=model
                     ) == pytest.approx((inp * price_in + out * price_out) / 1e6)
        gen_ai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
                  "gen_ai_request_model": model}
        assert value(metrics, "gen_ai_client_token_usage_sum", **gen_ai,
                     gen_ai_token_type="input") == inp
        assert value(metrics, "gen_ai_client_operation_duration_seconds_count", **gen_ai) == 1


async def test_stage_durations_are_observed_for_stages_that_ran(
        scripted: tuple[Metrics, list[RunResult]]) -> None:
    metrics, results = scripted
    ran = {stage: sum(1 for r in results for e in r.events
                      if e.stage == stage and e.outcome != "skipped")
           for stage in ("lookup", "answer")}
    assert ran == {"lookup": 4, "answer": 3}  # the hit finished the run before `answer`
    for stage, count in ran.items():
        assert value(metrics, "engine_stage_duration_seconds_count", pipeline="shop",
                     stage=stage) == count
    assert value(metrics, "engine_stage_outcomes_total", pipeline="shop", stage="answer",
                 outcome="error") == 1


async def test_no_label_carries_a_record_s_content_or_id(
        scripted: tuple[Metrics, list[RunResult]]) -> None:
    metrics, _ = scripted
    labels = {v for family in metrics.registry.collect() for s in family.samples
              for v in s.labels.values()}
    leaked = [v for v in labels if "user-4711" in v or "rec-" in v or "invoice" in v]
    assert leaked == []


async def test_an_open_breaker_and_its_transition_are_exported(stub: StubProvider) -> None:
    pipeline = build(stub, breaker="{window: 2, min_calls: 2, failure_rate: 0.5}")
    metrics = Metrics()
    metrics.watch_breakers(pipeline.resources)
    assert metrics.registry.get_sample_value("engine_breaker_state", {"breaker": "x"}) is None
    stub.plan("smart", ["500", "500"])
    await run_all(pipeline, metrics, ["first question", "second question"])
    [breaker] = [b for b in pipeline.resources._breakers.values() if "smart" in b.name]
    assert breaker.state == "open"
    assert value(metrics, "engine_breaker_state", breaker=breaker.name) == 2
    cheap = next(b.name for b in pipeline.resources._breakers.values() if "cheap" in b.name)
    assert metrics.registry.get_sample_value("engine_breaker_state", {"breaker": cheap}) == 0
    assert value(metrics, "engine_breaker_transitions_total", breaker=breaker.name,
                 **{"from": "closed", "to": "open"}) == 1
    metrics.close()


def test_a_failing_metric_never_breaks_observe(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()

    def broken(*labels: str) -> Any:
        raise RuntimeError("exporter down")

    metrics._m.requests = broken  # type: ignore[assignment]
    result = RunResult(0, None, "ok", output="x", duration=0.01)
    with caplog.at_level(logging.WARNING, logger="engine.observe.metrics"):
        metrics.observe("shop", None, result)
        metrics.observe("shop", None, result)
    assert metrics.failures.count == 2
    assert len([r for r in caplog.records if "metrics failed for record 0" in r.message]) == 1


def event(stage: str, outcome: Any = "ok", detail: str | None = None, **notes: Any
          ) -> StageEvent:
    return StageEvent(stage, 0.0, 0.01, outcome, detail, notes or None)


def test_guard_validate_and_timeouts_are_read_from_the_notes() -> None:
    """Hand-made results, with the notes the guard and validate stages write."""
    metrics = Metrics()
    results = [
        RunResult(0, None, "finished", events=[event("guard", "finished", blocked="rate_limited",
                                                     rate_limit={"remaining": 0})]),
        RunResult(1, None, "finished", events=[event("guard", "finished", blocked="injection")]),
        RunResult(2, None, "ok", events=[event("guard", pii=[{"entity": "EMAIL"}] * 2),
                                         event("check", parse="repaired", filters=["pii"])]),
        RunResult(3, None, "error", error={"type": "StageError"}, events=[
            event("check", "error", "StageError: no valid answer: not JSON"),
            event("slow", "timeout", "StageTimeout: ..."),
            event("late", "error", blocked="2 unsupported sentence(s)")]),
        RunResult(4, None, "error", error={"type": "DeadlineExceeded"}, events=[
            event("answer", "cancelled", llm=[{"tier": None, "model": None, "attempts": [
                ["smart", "timeout"], ["cheap", "timeout"]]}])]),
    ]
    for result in results:
        metrics.observe("p", None, result)
    count = {name: value(metrics, f"engine_{name}_total", pipeline="p", **labels)
             for name, labels in {
                 "rate_limit_rejections": {}, "guard_blocked": {"reason": "rate_limited"},
                 "guard_findings": {"kind": "injection"}}.items()}
    assert count == {"rate_limit_rejections": 1, "guard_blocked": 1, "guard_findings": 1}
    assert value(metrics, "engine_guard_findings_total", pipeline="p", kind="pii") == 1
    assert value(metrics, "engine_guard_blocked_total", pipeline="p",
                 reason="output_filter") == 1  # free text never becomes a label
    for outcome in ("repaired", "failed"):
        assert value(metrics, "engine_parse_total", pipeline="p", outcome=outcome) == 1
    assert value(metrics, "engine_output_filters_total", pipeline="p", filter="pii") == 1
    for kind, n in (("request", 1), ("stage", 1), ("call", 2)):
        assert value(metrics, "engine_timeouts_total", pipeline="p", kind=kind) == n
    assert value(metrics, "engine_fallbacks_total", pipeline="p", reason="timeout",
                 **{"from": "smart", "to": "cheap"}) == 1
    assert metrics.failures.count == 0


def test_a_value_on_a_bucket_bound_lands_in_that_bucket() -> None:
    metrics = Metrics()
    metrics.observe("p", None, RunResult(0, None, "ok", duration=0.5))
    bucket = "engine_request_duration_seconds_bucket"
    assert value(metrics, bucket, pipeline="p", status="ok", le="0.25") == 0
    assert value(metrics, bucket, pipeline="p", status="ok", le="0.5") == 1
    assert value(metrics, bucket, pipeline="p", status="ok", le="+Inf") == 1


def test_fallback_hops_follow_the_tiers_in_order() -> None:
    attempts = [["smart", "timeout"], ["smart", "server"], ["cheap", "rate_limit"],
                ["fast", "ok"]]
    assert fallback_hops(attempts) == [("smart", "cheap", "server"),
                                       ("cheap", "fast", "rate_limit")]
    assert fallback_hops([["smart", "ok"]]) == []
    assert fallback_hops([["smart", "breaker_open"]], static=True) == [
        ("smart", "static", "breaker_open")]


def test_serve_exposes_the_registry_over_http() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.observe("shop", None, RunResult(0, None, "ok", duration=0.02))
    port = metrics.serve(0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            body = reply.read().decode()
    finally:
        metrics.close()
    assert 'engine_requests_total{pipeline="shop",status="ok"} 1.0' in body


# -- the shipped alert rules and dashboard --------------------------------------------------

_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "unknown": ("",),
             "histogram": ("_bucket", "_sum", "_count", "_created")}
_NAME = re.compile(r"\b((?:engine|gen_ai)_[a-z0-9_]+)")
_LABELS = re.compile(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)|\{[^}]*\}")
"""Grouping clauses and selectors: what they name are labels, not metrics."""


def exported() -> set[str]:
    """Every series name a `Metrics` registry can expose."""
    return {family.name + suffix for family in Metrics().registry.collect()
            for suffix in _SUFFIXES[family.type]}


def referenced(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in _NAME.findall(_LABELS.sub(" ", expr))}


def test_every_alert_rule_names_exported_metrics() -> None:
    data = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    rules = [rule for group in data["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {"EngineHighLatencyP95", "EngineHighErrorRate",
                                           "EngineFallbackSpike", "EngineBreakerOpen",
                                           "EngineBudgetAt80Percent"}
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["annotations"]["summary"]
    names = referenced([r["expr"] for r in rules])
    assert names - exported() == set()
    breaker = next(r for r in rules if r["alert"] == "EngineBreakerOpen")
    assert breaker["for"] == "1m"


def panel_exprs(panels: list[dict[str, Any]]) -> list[str]:
    exprs = []
    for panel in panels:
        exprs += [t["expr"] for t in panel.get("targets", [])]
        exprs += panel_exprs(panel.get("panels", []))
    return exprs


def test_the_dashboard_charts_only_exported_metrics() -> None:
    board = json.loads((ROOT / "deploy/grafana/engine.json").read_text())
    exprs = panel_exprs(board["panels"])
    exprs += [str(v.get("query", "")) for v in board["templating"]["list"]]
    names = referenced(exprs)
    assert names and names <= exported(), names - exported()
    for needed in ("engine_requests_total", "engine_request_duration_seconds_bucket",
                   "engine_tokens_total", "engine_cost_usd_total",
                   "engine_cache_requests_total", "engine_fallbacks_total",
                   "engine_breaker_state"):
        assert needed in names
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
