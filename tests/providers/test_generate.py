"""The generate stage against the chaos stub, over real HTTP through litellm and the SDK.

Backoff waits go through a fake `sleep` (recorded, not slept); breakers and retry budgets
read a fake clock. Only timeouts and deadlines use real time, with short budgets.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from resources_pool import opened

from engine.compile import CompiledPipeline, compile_pipeline
from engine.errors import SpecError
from engine.providers.stub import StubProvider
from engine.providers.stub_config import FaultProfile, Rule, StubConfig
from engine.registry import Registry
from engine.runtime.context import RunHooks
from engine.spec import parse_spec


class FakeTime:
    """A clock that only moves when told to, and a sleep that records instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def stub() -> AsyncIterator[StubProvider]:
    async with StubProvider(StubConfig(seed=1)) as provider:
        yield provider


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def tier(stub: StubProvider, name: str, timeout: str = "2s", **extra: str) -> str:
    fields = ", ".join(f"{k}: {v}" for k, v in extra.items())
    return (f'{name}: {{model: openai/{name}, api_base: "{stub.base_url}", api_key: stub, '
            f"timeout: {timeout}{', ' + fields if fields else ''}}}")


def build(stub: StubProvider, fake: FakeTime | None, stage: str, *, tiers: list[str],
          defaults: str = "{timeout: 10s, retry: {attempts: 3, backoff: 1s, jitter: none}}",
          base_dir: Path | None = None) -> CompiledPipeline:
    models = "\n".join("  " + t for t in tiers)
    text = (f"version: 1\nname: gen\nmodels:\n{models}\ndefaults: {defaults}\n"
            f"stages:\n  answer:\n{textwrap.indent(textwrap.dedent(stage), '    ')}")
    resources = opened(clock=fake.clock, sleep=fake.sleep) if fake else opened()
    return compile_pipeline(parse_spec(text, base_dir=base_dir), Registry.from_entry_points(),
                            resources=resources)


PYRAMID = """\
type: generate
with:
  models: [smart, cheap, fast]
  messages: [{role: user, content: "{{ input.q }}"}]
  static_response: "We will reply by email."
"""


def outcomes(output: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["tier"], a["outcome"]) for a in output["attempts"]]


async def test_the_pyramid_degrades_in_order_and_says_why(stub: StubProvider,
                                                          fake: FakeTime) -> None:
    pipeline = build(stub, fake, PYRAMID, tiers=[
        tier(stub, "smart", "300ms"), tier(stub, "cheap"), tier(stub, "fast")])
    stub.plan("smart", ["hang"] * 3)
    stub.plan("cheap", ["429", "429", "429"])
    stub.plan("fast", ["500", "ok"])
    result = await pipeline.run({"q": "hello"})
    output = result.output
    assert (output["tier"], output["text"]) == ("fast", "echo: hello"), output["attempts"]
    assert outcomes(output) == [
        ("smart", "timeout"), ("smart", "timeout"), ("smart", "timeout"),
        ("cheap", "rate_limit"), ("cheap", "rate_limit"), ("cheap", "rate_limit"),
        ("fast", "server"), ("fast", "ok")]
    assert output["usage"]["output_tokens"] > 0
    notes = result.events[0].notes
    assert notes is not None and notes["tier"] == "fast"
    [call] = notes["llm"]
    assert (call["tier"], call["model"], call["attempts"][-1]) == ("fast", "openai/fast",
                                                                   ["fast", "ok"])
    assert call["output_tokens"] == output["usage"]["output_tokens"] > 0
    assert [outcome for _, outcome in call["attempts"]] == [o for _, o in outcomes(output)]


async def test_backoff_follows_the_schedule_and_honours_retry_after(
        stub: StubProvider, fake: FakeTime) -> None:
    pipeline = build(stub, fake, PYRAMID, tiers=[tier(stub, "smart"), tier(stub, "cheap"),
                                                 tier(stub, "fast")],
                     defaults="{timeout: 30s, retry: {attempts: 4, backoff: 1s, jitter: none}}")
    stub.plan("smart", ["500", "500", "429", "ok"])  # the stub's Retry-After is 1 s
    result = await pipeline.run({"q": "x"})
    assert result.output["tier"] == "smart"
    assert fake.slept == [1.0, 2.0, 4.0]  # 1 s, 2 s, then max(4 s, Retry-After 1 s)


async def test_a_retry_after_longer_than_the_budget_abandons_the_tier(
        fake: FakeTime) -> None:
    async with StubProvider(StubConfig(retry_after=60)) as stub:
        pipeline = build(stub, fake, PYRAMID, tiers=[
            tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")])
        stub.plan("smart", ["429"])
        result = await pipeline.run({"q": "x"})
    assert outcomes(result.output)[:2] == [("smart", "rate_limit"),
                                           ("smart", "retry_after_too_long")]
    assert result.output["tier"] == "cheap"
    assert fake.slept == []


async def test_a_bug_of_ours_is_not_retried_on_every_tier(stub: StubProvider,
                                                           fake: FakeTime) -> None:
    """A failure that is not the provider's (here: the client breaking) would repeat on
    every tier: the stage fails at once with it instead of burning through the pyramid."""
    pipeline = build(stub, fake, PYRAMID, tiers=[
        tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")])
    calls: list[str] = []

    async def broken(tier: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(tier.model)
        raise KeyError("a bug")

    pipeline.resources.models.complete = broken  # type: ignore[method-assign]
    result = await pipeline.run({"q": "x"})
    assert (result.status, result.error["type"]) == ("error", "KeyError")
    assert calls == ["openai/smart"]


async def test_non_retryable_errors_move_on_without_a_retry(stub: StubProvider,
                                                            fake: FakeTime) -> None:
    broken = f'wrong: {{model: openai/wrong, api_base: "{stub.base_url}/nowhere", api_key: x}}'
    pipeline = build(stub, fake, PYRAMID.replace("[smart, cheap, fast]", "[wrong, cheap]"),
                     tiers=[broken, tier(stub, "cheap")])
    result = await pipeline.run({"q": "x"})
    assert outcomes(result.output) == [("wrong", "not_found"), ("cheap", "ok")]
    assert fake.slept == []


async def test_a_tier_with_an_empty_api_key_is_skipped_without_a_call(
        stub: StubProvider, fake: FakeTime) -> None:
    unset = (f'smart: {{model: openai/smart, api_base: "{stub.base_url}", '
             "api_key: '${NOT_SET_ANYWHERE:-}'}")
    pipeline = build(stub, fake, PYRAMID, tiers=[unset, tier(stub, "cheap"), tier(stub, "fast")])
    result = await pipeline.run({"q": "x"})
    assert outcomes(result.output) == [("smart", "not_configured"), ("cheap", "ok")]
    assert stub.requests_for("smart") == []


async def test_the_static_response_answers_when_every_tier_fails(stub: StubProvider,
                                                                 fake: FakeTime) -> None:
    pipeline = build(stub, fake, PYRAMID, tiers=[
        tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")],
        defaults="{timeout: 10s, retry: {attempts: 1}}")
    for name in ("smart", "cheap", "fast"):
        stub.plan(name, ["503"])
    result = await pipeline.run({"q": "x"})
    assert result.status == "ok"
    assert (result.output["tier"], result.output["text"]) == ("static",
                                                               "We will reply by email.")
    assert [o for _, o in outcomes(result.output)] == ["server"] * 3


async def test_without_a_static_response_the_stage_fails_with_every_reason(
        stub: StubProvider, fake: FakeTime) -> None:
    stage = PYRAMID.replace('  static_response: "We will reply by email."\n', "")
    pipeline = build(stub, fake, stage, tiers=[
        tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")],
        defaults="{timeout: 10s, retry: {attempts: 1}}")
    assert "no last-resort tier" in pipeline.warnings[0].message
    for name in ("smart", "cheap", "fast"):
        stub.plan(name, ["500"])
    result = await pipeline.run({"q": "x"})
    assert result.status == "error"
    assert result.error["message"] == (
        "every tier failed (smart #1: server; cheap #1: server; fast #1: server)")


async def test_a_hanging_provider_never_holds_the_request_past_its_deadline(
        stub: StubProvider) -> None:
    pipeline = build(stub, None, PYRAMID, tiers=[
        tier(stub, "smart", "30s"), tier(stub, "cheap", "30s"), tier(stub, "fast", "30s")],
        defaults="{timeout: 600ms, retry: {attempts: 2, backoff: 10ms}}")
    for name in ("smart", "cheap", "fast"):
        stub.plan(name, ["hang", "hang"])
    result = await pipeline.run({"q": "x"})
    assert result.status == "ok"
    assert result.output["tier"] == "static"
    assert result.duration < 0.6
    assert ("smart", "timeout") in outcomes(result.output)


async def test_the_breaker_opens_skips_instantly_and_recovers(stub: StubProvider,
                                                              fake: FakeTime) -> None:
    defaults = ("{timeout: 10s, retry: {attempts: 1}, breaker: {window: 4, min_calls: 4, "
                "failure_rate: 0.5, cooldown: 30s, half_open_calls: 2}}")
    pipeline = build(stub, fake, PYRAMID, tiers=[
        tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")], defaults=defaults)
    stub.plan("smart", ["500"] * 4)
    for _ in range(4):
        last = await pipeline.run({"q": "x"})
    assert last.output["attempts"][0]["breaker"] == "closed→open"  # the trace shows it
    sent = len(stub.requests_for("smart"))
    skipped = await pipeline.run({"q": "x"})
    assert outcomes(skipped.output)[0] == ("smart", "breaker_open")
    assert len(stub.requests_for("smart")) == sent  # no call while open

    fake.now += 30  # the cooldown: exactly two trials, the third caller is refused
    stub.plan("smart", ["ok", "ok"])
    trials = await asyncio.gather(*(pipeline.run({"q": "x"}) for _ in range(3)))
    firsts = sorted(outcomes(r.output)[0][1] for r in trials)
    assert firsts == ["breaker_open", "ok", "ok"]
    assert any(r.output["attempts"][0].get("breaker") == "half_open→closed" for r in trials)
    closed = await pipeline.run({"q": "x"})
    assert outcomes(closed.output) == [("smart", "ok")]


async def test_failed_trials_reopen_the_breaker(stub: StubProvider, fake: FakeTime) -> None:
    defaults = ("{timeout: 10s, retry: {attempts: 1}, breaker: {window: 2, min_calls: 2, "
                "failure_rate: 0.5, cooldown: 10s, half_open_calls: 1}}")
    pipeline = build(stub, fake, PYRAMID, tiers=[
        tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")], defaults=defaults)
    stub.plan("smart", ["500", "500", "500"])
    for _ in range(2):
        await pipeline.run({"q": "x"})
    fake.now += 10
    trial = await pipeline.run({"q": "x"})
    assert outcomes(trial.output)[0] == ("smart", "server")
    again = await pipeline.run({"q": "x"})
    assert outcomes(again.output)[0] == ("smart", "breaker_open")


async def test_at_full_failure_retries_stay_within_the_retry_budget(
        stub: StubProvider, fake: FakeTime) -> None:
    pipeline = build(stub, fake, PYRAMID.replace("[smart, cheap, fast]", "[smart]"),
                     tiers=[tier(stub, "smart")],
                     defaults="{timeout: 10s, retry: {attempts: 3, backoff: 1ms}, "
                              "breaker: {min_calls: 1000, window: 1000}}")
    stub.config.models["smart"] = stub.config.model_copy(update={"failure_rate": 1.0})
    records = 200
    await asyncio.gather(*(pipeline.run({"q": str(i)}) for i in range(records)))
    retries = len(stub.requests_for("smart")) - records
    assert 0 < retries <= 0.2 * records + 10  # the ratio plus the budget's floor


async def test_concurrent_duplicate_idempotency_keys_make_one_call(fake: FakeTime) -> None:
    async with StubProvider(StubConfig(latency=0.1)) as stub:
        stage = PYRAMID + '  idempotency_key: "{{ input.ticket_id }}"\n'
        pipeline = build(stub, fake, stage, tiers=[
            tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")])
        results = await asyncio.gather(
            *(pipeline.run({"q": "same", "ticket_id": "T-1"}) for _ in range(10)))
        again = await pipeline.run({"q": "same", "ticket_id": "T-1"})
        other = await pipeline.run({"q": "other", "ticket_id": "T-2"})
    assert len(stub.requests_for("smart")) == 2  # T-1 once, T-2 once
    assert {r.output["text"] for r in [*results, again]} == {"echo: same"}
    assert stub.requests_for("smart")[0].headers.get("idempotency-key") == "T-1"
    assert again.events[0].notes["idempotent_replay"] is True
    assert other.output["text"] == "echo: other"


async def test_a_record_without_an_idempotency_key_is_never_replayed(fake: FakeTime) -> None:
    async with StubProvider(StubConfig()) as stub:
        stage = PYRAMID + "  idempotency_key: \"{{ input.get('ticket_id') }}\"\n"
        pipeline = build(stub, fake, stage, tiers=[
            tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")])
        first = await pipeline.run({"q": "one"})
        second = await pipeline.run({"q": "two"})
    assert (first.output["text"], second.output["text"]) == ("echo: one", "echo: two")
    assert [r.idempotency_key for r in stub.requests_for("smart")] == [None, None]


async def test_streaming_reports_time_to_first_token(stub: StubProvider,
                                                     fake: FakeTime) -> None:
    stage = PYRAMID + "  stream: true\n"
    pipeline = build(stub, fake, stage, tiers=[
        tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")])
    result = await pipeline.run({"q": "stream me"})
    assert result.output["text"] == "echo: stream me", result.output["attempts"][0]["detail"]
    assert 0 < result.output["ttft_ms"] < result.duration * 1000
    assert stub.requests_for("smart")[0].stream


async def test_a_streaming_stage_hands_its_text_to_the_caller_as_it_arrives(
        stub: StubProvider, fake: FakeTime) -> None:
    pipeline = build(stub, fake, PYRAMID + "  stream: true\n", tiers=[
        tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")])
    pieces: list[str] = []
    result = await pipeline.run({"q": "stream me please"}, hooks=RunHooks(
        on_token=pieces.append))
    assert len(pieces) > 1 and "".join(pieces) == result.output["text"] == (
        "echo: stream me please")


async def test_a_model_at_its_concurrency_limit_hands_the_call_to_the_next_tier() -> None:
    config = StubConfig(seed=1, models={"smart": FaultProfile(latency=0.3)})
    async with StubProvider(config) as stub:
        limited = tier(stub, "smart", limits="{concurrency: 1, max_wait: 50ms}")
        pipeline = build(stub, None, PYRAMID, tiers=[
            limited, tier(stub, "cheap"), tier(stub, "fast")])
        first, second = await asyncio.gather(pipeline.run({"q": "a"}), pipeline.run({"q": "b"}))
    assert first.output["tier"] == "smart"
    assert outcomes(second.output)[:2] == [("smart", "throttled"), ("cheap", "ok")]
    assert second.output["attempts"][0]["detail"] == "1 calls already in flight"
    assert len(stub.requests_for("smart")) == 1


async def test_a_stream_cut_before_the_first_token_falls_back(stub: StubProvider,
                                                              fake: FakeTime) -> None:
    pipeline = build(stub, fake, PYRAMID + "  stream: true\n", tiers=[
        tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")],
        defaults="{timeout: 10s, retry: {attempts: 1}}")
    stub.plan("smart", ["cut_before_first_token"])
    result = await pipeline.run({"q": "fall back please"})
    assert result.status == "ok", result.error
    assert result.output["tier"] == "cheap"
    assert outcomes(result.output)[0][0] == "smart"


async def test_a_stream_cut_after_the_first_token_is_reported_not_retried(
        stub: StubProvider, fake: FakeTime) -> None:
    pipeline = build(stub, fake, PYRAMID + "  stream: true\n", tiers=[
        tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")])
    stub.plan("smart", ["cut"])
    result = await pipeline.run({"q": "one two three four five six seven"})
    assert result.status == "error"
    assert result.error["type"] == "StreamInterrupted"
    assert "the stream broke after" in result.error["message"]
    assert stub.requests_for("cheap") == []


async def test_the_direct_path_classifies_failures_the_same_way(stub: StubProvider,
                                                                fake: FakeTime) -> None:
    pipeline = build(stub, fake, PYRAMID, tiers=[
        tier(stub, "smart", transport="direct"), tier(stub, "cheap", transport="direct"),
        tier(stub, "fast")], defaults="{timeout: 10s, retry: {attempts: 2, jitter: none}}")
    stub.plan("smart", ["429", "500"])
    result = await pipeline.run({"q": "direct"})
    assert outcomes(result.output) == [("smart", "rate_limit"), ("smart", "server"),
                                       ("cheap", "ok")]
    assert result.output["text"] == "echo: direct"
    assert fake.slept == [1.0]


async def test_price_overrides_the_cost_map(stub: StubProvider, fake: FakeTime) -> None:
    pipeline = build(stub, fake, PYRAMID, tiers=[
        tier(stub, "smart", price="{input: 1000000, output: 2000000}"),
        tier(stub, "cheap"), tier(stub, "fast")])
    result = await pipeline.run({"q": "a b c"})
    usage = result.output["usage"]
    assert result.output["cost_usd"] == usage["input_tokens"] + 2 * usage["output_tokens"]


def test_a_missing_prompt_file_is_a_located_error(stub: StubProvider, tmp_path: Path) -> None:
    stage = PYRAMID.replace('  messages: [{role: user, content: "{{ input.q }}"}]\n',
                            "  prompt: prompts/missing.j2\n")
    with pytest.raises(SpecError) as caught:
        build(stub, None, stage, base_dir=tmp_path, tiers=[
            tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")])
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.path == ("stages", "answer", "with", "prompt")
    assert "cannot read the prompt file" in diagnostic.message


async def test_a_prompt_file_is_rendered_and_its_references_checked(
        stub: StubProvider, fake: FakeTime, tmp_path: Path) -> None:
    (tmp_path / "answer.j2").write_text("Ticket: {{ input.q }}\nFrom: {{ stages.nope.output }}")
    stage = PYRAMID.replace('  messages: [{role: user, content: "{{ input.q }}"}]\n',
                            "  prompt: answer.j2\n")
    tiers = [tier(stub, "smart"), tier(stub, "cheap"), tier(stub, "fast")]
    with pytest.raises(SpecError) as caught:
        build(stub, fake, stage, base_dir=tmp_path, tiers=tiers)
    assert "unknown stage 'nope'" in caught.value.diagnostics[0].message
    (tmp_path / "answer.j2").write_text("Ticket: {{ input.q }}")
    result = await build(stub, fake, stage, base_dir=tmp_path, tiers=tiers).run({"q": "hi"})
    assert result.output["text"] == "echo: Ticket: hi"


async def test_cite_lists_the_passages_the_answer_cites_once_in_order() -> None:
    config = StubConfig(seed=1, rules=[Rule(match=".", reply="Yes [2], see [1] and [2]; [7]")])
    async with StubProvider(config) as provider:
        pipeline = build(provider, None, """\
            type: generate
            with:
              models: [smart]
              messages: [{role: user, content: "{{ input.q }}"}]
              cite: "{{ input.passages }}"
            """, tiers=[tier(provider, "smart")])
        passages = [{"source": "refunds", "text": "a"}, {"source": "invoices", "text": "b"}]
        result = await pipeline.run({"q": "hi", "passages": passages})
        assert result.status == "ok", result.error
        assert result.output["sources"] == ["invoices", "refunds"]  # [7] is out of range
