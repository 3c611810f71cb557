"""RunResult's own sums: the model calls a run made, their tokens and cost, and whether its
time ran out — what serve's `usage`, the audit log, canaries and golden cost bounds read."""

from __future__ import annotations

from engine.results import RunResult, StageEvent


def test_usage_sums_every_call_of_every_stage() -> None:
    classify = StageEvent("classify", 0.0, 0.1, "ok", notes={"llm": [
        {"tier": "cheap", "input_tokens": 10, "output_tokens": 2, "cost_usd": 0.001}]})
    reply = StageEvent("reply", 0.1, 0.5, "ok", notes={"llm": [
        {"tier": "smart", "input_tokens": 100, "output_tokens": 40, "cost_usd": 0.01},
        {"tier": "smart", "input_tokens": 120, "output_tokens": 30, "cost_usd": 0.012},
        "not a call"]})
    result = RunResult(0, None, "ok", events=[classify, StageEvent("route", 0.1, 0.1, "ok"),
                                              reply])
    assert [call["tier"] for call in result.calls()] == ["cheap", "smart", "smart"]
    tokens_in, tokens_out, cost = result.usage()
    assert (tokens_in, tokens_out) == (230, 72) and abs(cost - 0.023) < 1e-12
    assert RunResult(1, None, "ok").usage() == (0, 0, 0.0)


def test_timed_out_is_a_deadline_or_a_stage_timeout() -> None:
    assert RunResult(0, None, "error", error={"type": "DeadlineExceeded"}).timed_out()
    assert RunResult(0, None, "error", error={"type": "StageTimeout"}).timed_out()
    assert not RunResult(0, None, "error", error={"type": "StageError"}).timed_out()
    assert not RunResult(0, None, "ok").timed_out()
