"""`--trace` tells each request's story from its stages' notes."""

from __future__ import annotations

from engine.observe.timeline import story, timeline
from engine.results import RunResult, StageEvent


def test_the_story_names_the_fallback_the_tokens_the_validation_and_the_cost() -> None:
    call = {"tier": "cheap", "model": "openai/cheap", "input_tokens": 340,
            "output_tokens": 125, "cost_usd": 0.0008,
            "attempts": [["smart", "timeout"], ["smart", "timeout"], ["cheap", "ok"]]}
    result = RunResult(7, "T-17", "ok", events=[
        StageEvent("lookup", 0.0, 0.01, "ok", notes={"cache": "miss"}),
        StageEvent("reply", 0.01, 6.7, "ok", notes={"tier": "cheap", "llm": [call]}),
        StageEvent("check", 6.71, 0.08, "ok", notes={"parse": "ok", "reasks": 1,
                                                      "filters": ["pii"]}),
    ], duration=6.8, trace_id="7f3a" + "0" * 28)
    assert story(result) == (
        "#7 id=T-17 · ok · req 7f3a · cache miss · reply: smart timeout → cheap 340 tok in · "
        "125 tok out · valid after 1 re-ask(s), pii fired · 6.80 s · $0.000800")
    lines = timeline(result).splitlines()
    assert lines[0] == story(result) and lines[1].startswith("    lookup ✓")


def test_a_hit_and_a_block_are_told_too() -> None:
    hit = RunResult(0, None, "finished", finished_by="lookup", duration=0.001, events=[
        StageEvent("lookup", 0.0, 0.001, "finished", notes={"cache": "semantic"})])
    assert story(hit).startswith("#0 · finished · cache semantic hit · finished by lookup")
    blocked = RunResult(1, None, "finished", finished_by="refuse", duration=0.001, events=[
        StageEvent("guard", 0.0, 0.001, "handoff", notes={"blocked": "injection"})])
    assert "blocked: injection" in story(blocked)
