"""Executor behaviour that involves time or many runs: deadlines, concurrency, weighted routes.

No tight timing asserts: bounds are generous (a run that should stop at 200 ms must stop well
within 2 s), and concurrency is checked by overlapping trace events, not by wall-clock sums.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from engine.results import RunResult, StageEvent
from engine.runtime.context import StageContext
from engine.stages.base import Stage, StageConfig
from engine.testing import compile_text, outcomes

HEADER = "version: 1\nname: timing\n"


def _event(result: RunResult, stage: str) -> StageEvent:
    (event,) = [e for e in result.events if e.stage == stage]
    return event


async def _timed_run(text: str, record: Any = None) -> tuple[RunResult, float]:
    pipeline = compile_text(HEADER + text)
    started = time.perf_counter()
    result = await pipeline.run(record or {})
    return result, time.perf_counter() - started


# --- the request deadline -----------------------------------------------------------------


async def test_deadline_stops_a_hanging_stage_promptly() -> None:
    result, took = await _timed_run("""
defaults: {timeout: 200ms}
stages:
  stuck: {type: hang}
""")
    assert result.status == "error"
    assert result.error is not None
    assert result.error["type"] == "DeadlineExceeded"
    assert result.error["stage"] is None
    assert "stuck" in result.error["message"]  # names what was still running
    assert took < 2.0
    event = _event(result, "stuck")
    assert event.outcome == "cancelled"
    assert event.duration > 0.1  # measured from the stage's real start, not the cancel


async def test_deadline_cancels_every_running_stage_and_keeps_finished_ones() -> None:
    result, took = await _timed_run("""
defaults: {timeout: 200ms}
stages:
  quick: {type: sleep, with: {output: Q}}
  stuck: {type: hang}
  slow: {type: sleep, needs: [quick], with: {seconds: 10s}}
  never: {type: template, needs: [slow, stuck], with: {output: N}}
""")
    assert took < 2.0
    assert result.error is not None and result.error["type"] == "DeadlineExceeded"
    assert outcomes(result) == {"quick": "ok", "stuck": "cancelled", "slow": "cancelled"}


async def test_deadline_beats_a_longer_stage_timeout_and_on_error() -> None:
    """The request deadline is the outer bound: no stage setting can outlive it."""
    result, took = await _timed_run("""
defaults: {timeout: 200ms}
stages:
  stuck: {type: hang, timeout: 10s, on_error: continue}
""")
    assert took < 2.0
    assert result.error is not None and result.error["type"] == "DeadlineExceeded"
    assert outcomes(result) == {"stuck": "cancelled"}


async def test_deadline_cancels_a_handler_running_in_place() -> None:
    result, took = await _timed_run("""
defaults: {timeout: 200ms}
stages:
  boom: {type: fail, on_error: stuck}
  stuck: {type: hang}
""")
    assert took < 2.0
    assert result.error is not None and result.error["type"] == "DeadlineExceeded"
    assert outcomes(result) == {"boom": "recovered", "stuck": "cancelled"}


class _RemainingConfig(StageConfig):
    pass


class _Remaining(Stage[_RemainingConfig]):
    """Reports the budget a stage sees, to check the deadline reaches the context."""

    Config = _RemainingConfig

    async def run(self, ctx: StageContext) -> Any:
        return ctx.remaining()


async def test_stages_see_the_remaining_request_budget() -> None:
    pipeline = compile_text(HEADER + """
defaults: {timeout: 30s}
stages:
  budget: {type: remaining}
""", {"remaining": _Remaining})
    result = await pipeline.run({})
    assert 0 < result.output <= 30


async def test_a_stage_timeout_shrinks_the_budget_the_stage_sees() -> None:
    pipeline = compile_text(HEADER + """
defaults: {timeout: 30s}
stages:
  budget: {type: remaining, timeout: 2s}
""", {"remaining": _Remaining})
    result = await pipeline.run({})
    assert 0 < result.output <= 2


# --- concurrency --------------------------------------------------------------------------


async def test_independent_stages_run_concurrently() -> None:
    result, _ = await _timed_run("""
stages:
  left: {type: sleep, with: {seconds: 200ms, output: L}}
  right: {type: sleep, with: {seconds: 200ms, output: R}}
  join:
    type: template
    needs: [left, right]
    with: {output: "{{ stages.left.output }}{{ stages.right.output }}"}
""")
    assert result.output == "LR"
    left, right, join = (_event(result, n) for n in ("left", "right", "join"))
    # Each started before the other ended: their runs overlapped.
    assert left.start < right.start + right.duration
    assert right.start < left.start + left.duration
    assert result.duration < left.duration + right.duration
    assert join.start >= max(left.start + left.duration, right.start + right.duration)


async def test_a_stage_starts_as_soon_as_its_own_needs_are_done() -> None:
    """`fast_next` must not wait for the slow branch it does not depend on."""
    result, _ = await _timed_run("""
stages:
  fast: {type: sleep, with: {output: F}}
  slow: {type: sleep, with: {seconds: 200ms, output: S}}
  fast_next: {type: sleep, needs: [fast], with: {output: "{{ stages.fast.output }}"}}
""")
    slow, fast_next = _event(result, "slow"), _event(result, "fast_next")
    assert fast_next.start + fast_next.duration < slow.start + slow.duration


async def test_one_compiled_pipeline_runs_many_records_at_once() -> None:
    pipeline = compile_text(HEADER + """
stages:
  a: {type: sleep, with: {seconds: 20ms, output: "{{ input.n }}"}}
  b: {type: template, needs: [a], with: {output: "{{ stages.a.output * 2 }}"}}
""")
    results = await asyncio.gather(*(pipeline.run({"n": n}, index=n) for n in range(100)))
    assert [r.output for r in results] == [2 * n for n in range(100)]
    assert [r.index for r in results] == list(range(100))


# --- weighted routing ---------------------------------------------------------------------

WEIGHTED = HEADER + """
stages:
  split:
    type: route
    with:
      key: "{{ input.user }}"
      routes: [{weight: 70, to: a}, {weight: 20, to: b}, {weight: 10, to: c}]
  a: {type: template, needs: [split], with: {output: a}}
  b: {type: template, needs: [split], with: {output: b}}
  c: {type: template, needs: [split], with: {output: c}}
"""


async def test_weighted_route_is_sticky_across_runs_and_compiles() -> None:
    first, second = compile_text(WEIGHTED), compile_text(WEIGHTED)
    for user in ("ann", "bob", "cyd", "dee", "42"):
        runs = [await first.run({"user": user}) for _ in range(3)]
        runs.append(await second.run({"user": user}))
        assert len({r.output for r in runs}) == 1, user


async def test_weighted_route_shares_converge_to_the_weights() -> None:
    pipeline = compile_text(WEIGHTED)
    keys = 2000
    results = await asyncio.gather(*(pipeline.run({"user": f"user-{i}"}) for i in range(keys)))
    counts = Counter(r.output for r in results)
    for branch, weight in {"a": 0.7, "b": 0.2, "c": 0.1}.items():
        assert abs(counts[branch] / keys - weight) < 0.03, counts
    # The unchosen branches are skipped, as with a conditional route.
    assert all(sorted(outcomes(r).values()).count("skipped") == 2 for r in results)
