"""Budgets hold under concurrency: a call reserves its worst-case cost before it is made and
settles the real cost after, in memory and through Redis; block fails the stage, degrade
leaves only the free tier; alerts fire once per threshold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from resources_pool import opened

from engine.compile import CompiledPipeline, compile_pipeline
from engine.providers.stub import StubProvider
from engine.providers.stub_config import Rule, StubConfig
from engine.registry import Registry
from engine.results import RunResult
from engine.spec import parse_spec

# $1 per output token and max_tokens 2: every call reserves $2; the stub answers two words
# ("two words"), so every call costs exactly $2.
PRICED = "price: {input: 0, output: 1000000}, params: {max_tokens: 2}"


@pytest.fixture
async def stub() -> AsyncIterator[StubProvider]:
    config = StubConfig(seed=1, latency=0.05, rules=[Rule(match=".", reply="two words")])
    async with StubProvider(config) as provider:
        yield provider


def build(stub: StubProvider, budgets: str, *, tiers: str = "[smart]",
          alerts: str = "") -> CompiledPipeline:
    text = f"""\
version: 1
name: budgeted
models:
  smart: {{model: openai/smart, api_base: "{stub.base_url}", api_key: stub, timeout: 5s,
          {PRICED}}}
  local: {{model: local/kb}}
defaults: {{retry: {{attempts: 1}}}}
budgets:
{budgets}
{alerts}
stages:
  answer:
    type: generate
    with: {{models: {tiers}, messages: [{{role: user, content: "{{{{ input.q }}}}"}}]}}
output: "{{{{ stages.answer.output }}}}"
"""
    return compile_pipeline(parse_spec(text), Registry.from_entry_points(), resources=opened())


def answered(results: list[RunResult]) -> list[RunResult]:
    return [r for r in results if r.status == "ok"]


async def test_a_block_budget_fails_the_call_that_would_cross_it(stub: StubProvider) -> None:
    pipeline = build(stub, "  - {limit_usd: 10, on_exceed: block}")
    results = [await pipeline.run({"q": f"q{i}"}) for i in range(7)]
    assert [r.status for r in results] == ["ok"] * 5 + ["error"] * 2
    assert results[5].error is not None and results[5].error["type"] == "BudgetExceeded"
    assert "day budget of $10" in results[5].error["message"]
    assert len(stub.requests) == 5


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_fifty_concurrent_requests_never_overshoot(stub: StubProvider, store: str,
                                                         request: pytest.FixtureRequest
                                                         ) -> None:
    where = request.getfixturevalue("redis_url") if store == "redis" else "memory"
    pipeline = build(stub, f'  - {{limit_usd: 10, on_exceed: block, store: "{where}"}}')
    results = await asyncio.gather(*(pipeline.run({"q": f"q{i}"}) for i in range(50)))
    assert len(answered(results)) == 5 and len(stub.requests) == 5
    spent = sum(r.output["cost_usd"] for r in answered(results))
    assert spent == pytest.approx(10.0)
    await pipeline.resources.aclose()


async def test_degrade_leaves_only_the_free_tier(stub: StubProvider) -> None:
    pipeline = build(stub, "  - {limit_usd: 4, on_exceed: degrade}", tiers="[smart, local]")
    results = [await pipeline.run({"q": f"q{i}"}) for i in range(4)]
    assert [r.output["tier"] for r in results] == ["smart", "smart", "local", "local"]
    skipped = results[2].output["attempts"][0]
    assert (skipped["tier"], skipped["outcome"]) == ("smart", "budget")
    assert len(stub.requests) == 2


async def test_a_tenant_scope_keeps_tenants_apart(stub: StubProvider) -> None:
    pipeline = build(stub, '  - {scope: "{{ input.tenant }}", limit_usd: 4}')
    runs = [("acme", "ok"), ("acme", "ok"), ("acme", "error"), ("globex", "ok")]
    for tenant, status in runs:
        assert (await pipeline.run({"q": "hi", "tenant": tenant})).status == status


async def test_alerts_fire_once_per_threshold(
        stub: StubProvider, webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, posted = webhook
    pipeline = build(stub, "  - {limit_usd: 8, alert_at: [0.5, 1.0], on_exceed: block}",
                     alerts=f'alerts: {{webhook: "{url}"}}')
    for i in range(5):
        await pipeline.run({"q": f"q{i}"})
    await pipeline.resources.settle()
    assert [(p["threshold"], p["spent_usd"]) for p in posted] == [(0.5, 4.0), (1.0, 8.0)]
    assert posted[0]["limit_usd"] == 8 and posted[0]["scope"] == "pipeline"


async def test_the_share_spent_is_exported_as_a_metric(stub: StubProvider) -> None:
    from engine.observe.metrics import Metrics

    pipeline = build(stub, '  - {scope: "{{ input.tenant }}", period: month, limit_usd: 8}')
    metrics = Metrics()
    metrics.watch_breakers(pipeline.resources)
    for tenant in ("acme", "acme", "acme", "globex"):
        await pipeline.run({"q": "hi", "tenant": tenant})
    share = metrics.registry.get_sample_value(
        "engine_budget_spend_ratio",
        {"pipeline": "budgeted", "budget": "{{ input.tenant }}/month"})
    assert share == pytest.approx(0.75)  # acme: $6 of $8, the busiest tenant
