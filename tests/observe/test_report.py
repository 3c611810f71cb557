"""`engine report`: percentiles against numpy, rates on records with known answers, SLO
breaches, and the whole path — a stub-backed run into the store, then the CLI."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from resources_pool import opened

from engine.cli import main
from engine.compile import compile_pipeline
from engine.observe.report import Report, build_reports, check_slo, nearest_rank, report_of
from engine.observe.store import RunStore, read_runs, stored_record
from engine.providers.stub import StubProvider
from engine.providers.stub_config import StubConfig
from engine.registry import Registry
from engine.results import Outcome, RunResult, StageEvent, Status
from engine.runtime.batch import InputRecord, run_batch
from engine.spec import parse_spec


def call(tier: str | None, attempts: list[list[str]], *, model: str | None = None,
         tokens: tuple[int, int] = (0, 0), cost: float = 0.0,
         ttft_ms: float | None = None) -> dict[str, Any]:
    """One `notes.llm` entry, shaped like `TierOutcome.call_note()`."""
    note: dict[str, Any] = {"tier": tier, "model": model or (tier and f"openai/{tier}"),
                            "input_tokens": tokens[0], "output_tokens": tokens[1],
                            "cost_usd": cost, "attempts": attempts}
    if ttft_ms is not None:
        note["ttft_ms"] = ttft_ms
    return note


def result(index: int, status: Status, *events: StageEvent, duration: float = 0.1,
           error_type: str | None = None, finished_by: str | None = None,
           handed_off: bool = False) -> RunResult:
    error = {"stage": "answer", "type": error_type, "message": "x"} if error_type else None
    return RunResult(index, None, status, error=error, duration=duration, events=list(events),
                     finished_by=finished_by, handed_off=handed_off,
                     started_at=1_700_000_000.0 + index, trace_id=f"{index:032x}")


def lines(*results: RunResult) -> list[dict[str, Any]]:
    return [stored_record(r) for r in results]


# -- percentiles ------------------------------------------------------------------------------
def test_nearest_rank_on_the_textbook_example() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]  # Wikipedia, "Percentile", nearest-rank method
    assert [nearest_rank(values, q) for q in (5, 30, 40, 50, 100)] == [15, 20, 20, 35, 50]


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20, 100, 101, 997])
def test_latency_and_ttft_percentiles_match_numpy(n: int) -> None:
    rng = random.Random(n)
    micros = [rng.randint(100, 5_000_000) for _ in range(n)]  # whole µs: exact in duration_ms
    ttfts = [rng.randint(1_000, 900_000) / 1000 for _ in range(n)]
    results = [result(i, "ok", StageEvent("answer", 0, us / 1e6, "ok", notes={"llm": [
        call("smart", [["smart", "ok"]], ttft_ms=ttft)]}), duration=us / 1e6)
        for i, (us, ttft) in enumerate(zip(micros, ttfts, strict=True))]
    report = report_of("p", lines(*results))
    for q in (50, 95, 99):
        expected = np.percentile(np.array(micros) / 1e6, q, method="inverted_cdf")
        assert report.latency[f"p{q}"] == pytest.approx(float(expected), abs=1e-9), q
    assert report.ttft is not None
    for q in (50, 95):
        expected = np.percentile(np.array(ttfts) / 1000, q, method="inverted_cdf")
        assert report.ttft[f"p{q}"] == pytest.approx(float(expected), abs=1e-9), q


# -- rates on hand-built records ---------------------------------------------------------------
STAGES = {"lookup": "cache", "answer": "generate", "check": "validate", "human": "fallback"}


def lookup(kind: str) -> StageEvent:
    outcome: Outcome = "ok" if kind == "miss" else "finished"
    return StageEvent("lookup", 0.0, 0.001, outcome, notes={"cache": kind})


def answer(*calls: dict[str, Any], static: bool = False) -> StageEvent:
    notes: dict[str, Any] = {"tier": "static" if static else calls[-1]["tier"], "llm": list(calls)}
    return StageEvent("answer", 0.001, 0.05, "ok", notes=notes)


def check(parse: str | None) -> StageEvent:
    if parse is None:  # the answer never passed: validate failed
        return StageEvent("check", 0.06, 0.01, "error", detail="StageError: no JSON")
    return StageEvent("check", 0.06, 0.01, "ok", notes={"parse": parse, "reasks": 0})


SMART = call("smart", [["smart", "ok"]], tokens=(10, 5), cost=0.01)
CHEAP = call("cheap", [["smart", "timeout"], ["smart", "timeout"], ["cheap", "ok"]],
             tokens=(20, 10), cost=0.002)
STATIC = call(None, [["smart", "server"], ["cheap", "rate_limit"]])

MIXED = [
    result(0, "finished", lookup("exact"), finished_by="lookup"),            # cache hit
    result(1, "finished", lookup("semantic"), finished_by="lookup"),         # cache hit
    result(2, "ok", lookup("miss"), answer(SMART), check("ok")),             # first tier
    result(3, "ok", lookup("miss"), answer(CHEAP), check("repaired")),       # fell back
    result(4, "error", lookup("miss"), answer(STATIC, static=True), check(None),
           error_type="StageError"),                                          # static, bad
    result(5, "error", StageEvent("answer", 0.0, 10.0, "cancelled"),
           error_type="DeadlineExceeded"),                                    # no cache
    result(6, "finished", lookup("miss"), StageEvent("human", 0.001, 0.0, "finished"),
           finished_by="human", handed_off=True),                             # to a human
]


@pytest.fixture
def mixed() -> Report:
    return report_of("p", lines(*MIXED), stages=STAGES)


def test_cache_hit_rate_counts_records_that_passed_a_cache(mixed: Report) -> None:
    assert (mixed.cache_exact.hits, mixed.cache_semantic.hits, mixed.cache_hits.of) == (1, 1, 6)
    assert mixed.cache_hits.rate == pytest.approx(2 / 6)


def test_fallback_rate_counts_records_with_a_hop(mixed: Report) -> None:
    assert (mixed.fallbacks.hits, mixed.fallbacks.of) == (2, 3)  # of the records that called
    assert mixed.hops == {"smart → cheap (timeout)": 1, "smart → cheap (server)": 1,
                          "cheap → static (rate_limit)": 1}


def test_timeout_rate_counts_attempts_stages_and_deadlines(mixed: Report) -> None:
    assert (mixed.timeouts.hits, mixed.timeouts.of) == (2, 7)  # record 3 (attempts), 5


def test_parse_success_counts_records_that_reached_validate(mixed: Report) -> None:
    assert (mixed.parse.hits, mixed.parse.of, mixed.repaired.hits) == (2, 3, 1)


def test_parse_success_without_stage_types_sees_only_noted_parses() -> None:
    report = report_of("p", lines(*MIXED), stages=None)
    assert (report.parse.hits, report.parse.of) == (2, 2)


def test_tokens_cost_and_who_answered(mixed: Report) -> None:
    assert mixed.records == 7 and mixed.errors.rate == pytest.approx(2 / 7)
    assert mixed.input_tokens == pytest.approx(30 / 7)
    assert mixed.output_tokens == pytest.approx(15 / 7)
    assert mixed.cost_per_request == pytest.approx(0.012 / 7)
    assert {m: (u.calls, u.cost_usd) for m, u in mixed.models.items()} == {
        "openai/smart": (1, 0.01), "openai/cheap": (1, 0.002)}
    assert mixed.tiers == {"cache": 2, "error": 2, "smart": 1, "cheap": 1, "handoff": 1}


# -- SLO checks --------------------------------------------------------------------------------
def test_slo_bounds_point_the_right_way(mixed: Report) -> None:
    slo = {"error_rate": 0.5, "timeout_rate": 0.2, "cache_hit_rate": 0.5,
           "parse_success": 0.5, "latency_p99": 0.1, "cost_per_request": 1.0}
    checks = {c.measure: c.breached for c in check_slo(mixed.measures(), slo)}
    assert checks == {"error_rate": False, "timeout_rate": True, "cache_hit_rate": True,
                      "parse_success": False, "latency_p99": False, "cost_per_request": False}


def test_a_measure_without_data_is_not_a_breach() -> None:
    report = report_of("p", lines(result(0, "ok")), slo={"cache_hit_rate": 0.9})
    [only] = report.checks
    assert only.value is None and not only.breached and not report.breaches


def write_run(folder: Path, pipeline: str, started: float, slo: dict[str, float] | None,
              *results: RunResult) -> None:
    header = {"kind": "run", "format": 1, "run_id": f"{started:.0f}", "pipeline": pipeline,
              "file": None, "started": started, "slo": slo, "stages": None}
    rows = [header, *lines(*results)]
    path = folder / pipeline / f"{1000 - started:.0f}.jsonl"  # older runs sort last
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_reports_group_by_pipeline_and_use_the_newest_slo(tmp_path: Path) -> None:
    slow = result(0, "ok", duration=2.0)
    write_run(tmp_path, "a", 300.0, {"latency_p50": 10.0}, slow)  # newest: lenient
    write_run(tmp_path, "a", 100.0, {"latency_p50": 0.5}, slow)   # oldest: strict
    write_run(tmp_path, "b", 200.0, None, result(0, "error", error_type="StageError"))
    a, b = build_reports(read_runs(tmp_path))
    assert (a.pipeline, a.runs, a.records, a.slo, a.breaches) == (
        "a", 2, 2, {"latency_p50": 10.0}, [])
    assert (b.pipeline, b.runs, b.records, b.errors.rate, b.checks) == ("b", 1, 1, 1.0, [])
    assert [r.pipeline for r in build_reports(read_runs(tmp_path), "b")] == ["b"]


# -- the whole path: a run into the store, then `engine report` ---------------------------------
PIPELINE = """\
version: 1
name: tiny
models:
  smart: {{model: openai/smart, api_base: "{base}", api_key: stub, timeout: 2s,
           price: {{input: 1.0, output: 2.0}}}}
  cheap: {{model: openai/cheap, api_base: "{base}", api_key: stub, timeout: 2s}}
defaults: {{timeout: 10s, retry: {{attempts: 1}}}}
stages:
  answer:
    type: generate
    with:
      models: [smart, cheap]
      messages: [{{role: user, content: "{{{{ input.q }}}}"}}]
{slo}
"""


@pytest.fixture
async def stub() -> AsyncIterator[StubProvider]:
    async with StubProvider(StubConfig(seed=1)) as provider:
        yield provider


async def stored_run(stub: StubProvider, folder: Path, slo: str) -> None:
    """Four records through a stub-backed pipeline; the first falls back to `cheap`."""
    file = folder / "tiny.yaml"
    file.write_text(PIPELINE.format(base=stub.base_url, slo=slo))
    loaded = parse_spec(file.read_text(), file=str(file))
    pipeline = compile_pipeline(loaded, Registry.from_entry_points(), resources=opened())
    stub.plan("smart", ["500", "ok", "ok", "ok"])
    store = RunStore(folder / "runs")
    store.open_pipeline(pipeline)
    items = [InputRecord(i, {"q": f"hello {i}"}) for i in range(4)]
    await run_batch(pipeline, items, lambda r: store.observe(pipeline.name, None, r), 1)
    store.close()


@pytest.mark.parametrize(("slo", "code"), [("", 0), ("slo: {latency_p95: 60s}", 0),
                                           ("slo: {latency_p95: 1ms}", 1)])
async def test_report_exits_non_zero_on_a_breach(stub: StubProvider, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 slo: str, code: int) -> None:
    await stored_run(stub, tmp_path, slo)
    assert main(["report", str(tmp_path / "runs")]) == code
    out = capsys.readouterr().out
    assert "openai/smart" in out
    assert ("SLO breached: tiny latency_p95" in out) == bool(code)


async def test_report_json_and_html(stub: StubProvider, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    await stored_run(stub, tmp_path, "slo: {latency_p95: 1ms, fallback_rate: 0.5}")
    page = tmp_path / "report.html"
    code = main(["report", str(tmp_path / "runs"), "--json", "--html", str(page)])
    captured = capsys.readouterr()
    assert code == 1 and "latency_p95" in captured.err
    [report] = json.loads(captured.out)["reports"]
    assert (report["pipeline"], report["records"], report["statuses"]) == ("tiny", 4, {"ok": 4})
    assert report["fallbacks"] == {"hits": 1, "of": 4, "rate": 0.25}
    assert report["hops"] == {"smart → cheap (server)": 1}
    assert report["models"]["openai/smart"]["calls"] == 3  # by answering model
    assert report["models"]["openai/cheap"]["calls"] == 1
    assert report["models"]["openai/smart"]["cost_usd"] > 0
    assert [c["measure"] for c in report["checks"] if c["breached"]] == ["latency_p95"]
    html = page.read_text()
    assert "<svg" in html and "openai/smart" in html and "<script" not in html


def test_nothing_to_report_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(tmp_path)]) == 2  # a folder without stored runs
    store = RunStore(tmp_path)
    store.open_run("empty")  # a header, no records
    store.close()
    assert main(["report", str(tmp_path)]) == 2
