"""Circuit breaker, resilience4j semantics, on a fake clock: the window, min_calls, the exact
threshold, instant refusal while open, the half-open trial count, hung trials, listeners."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

import pytest

from engine.providers.breaker import (
    BreakerState,
    CircuitBreaker,
    MemoryBreakerStore,
    Permit,
    State,
)
from engine.spec.models import Breaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, **spec: float) -> tuple[CircuitBreaker, list[tuple[State, State]]]:
    settings = {"window": 10, "min_calls": 5, "failure_rate": 0.5, "cooldown": 30,
                "half_open_calls": 2, **spec}
    breaker = CircuitBreaker("m", Breaker.model_validate(settings), clock=clock)
    moves: list[tuple[State, State]] = []
    breaker.on_transition(lambda name, old, new, at: moves.append((old, new)))
    return breaker, moves


async def call(breaker: CircuitBreaker, success: bool, timeout: float = 5.0) -> bool:
    """One call through the breaker; False when refused."""
    permit = await breaker.acquire(timeout)
    if permit is None:
        return False
    await breaker.record(permit, success)
    return True


async def trip(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(5):
        await call(breaker, False)
    assert breaker.state == "open"
    clock.now += 30


async def test_stays_closed_below_min_calls_even_at_total_failure() -> None:
    breaker, moves = make(FakeClock())
    for _ in range(4):
        assert await call(breaker, False)
    assert breaker.state == "closed" and moves == []
    await call(breaker, False)
    assert breaker.state == "open"


async def test_opens_at_the_threshold_exactly() -> None:
    breaker, _ = make(FakeClock(), min_calls=10, failure_rate=0.4)
    for success in [True] * 6 + [False] * 3:
        await call(breaker, success)
    await call(breaker, True)  # 3 of 10 = 30 %: under
    assert breaker.state == "closed"
    await call(breaker, False)  # window slides: 6 ok dropped to 5, 4 of 10 = 40 %: at
    assert breaker.state == "open"


async def test_just_below_the_threshold_stays_closed() -> None:
    breaker, _ = make(FakeClock(), window=4, min_calls=4, failure_rate=0.75)
    for success in (True, False, False, True):
        await call(breaker, success)
    assert breaker.state == "closed"  # 50 % < 75 %


async def test_window_slides_old_outcomes_fall_out() -> None:
    breaker, _ = make(FakeClock(), window=4, min_calls=4, failure_rate=0.75)
    for success in (False, False, True, True, True, True, False, False):
        await call(breaker, success)
    assert breaker.state == "closed"  # last 4: T T F F = 50 %, the early failures are gone
    assert (await breaker.snapshot()).outcomes == [True, True, False, False]
    await call(breaker, False)  # T F F F = 75 %
    assert breaker.state == "open"


async def test_refuses_instantly_while_open_until_the_cooldown() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    await trip(breaker, clock)
    clock.now -= 0.001
    async with asyncio.timeout(0.5):  # refusal never waits
        results = await asyncio.gather(*(breaker.acquire(5.0) for _ in range(100)))
    assert results == [None] * 100 and breaker.state == "open"


async def test_half_open_admits_exactly_the_trial_calls() -> None:
    clock = FakeClock()
    breaker, moves = make(clock, half_open_calls=3)
    await trip(breaker, clock)
    permits = [await breaker.acquire(5.0) for _ in range(4)]
    assert breaker.state == "half_open"
    assert all(isinstance(p, Permit) and p.trial for p in permits[:3])
    assert permits[3] is None
    assert moves == [("closed", "open"), ("open", "half_open")]


async def test_closes_when_the_trials_succeed() -> None:
    clock = FakeClock()
    breaker, moves = make(clock)
    await trip(breaker, clock)
    first, second = await breaker.acquire(5.0), await breaker.acquire(5.0)
    assert first and second
    await breaker.record(first, True)
    assert breaker.state == "half_open"  # waits for every trial
    await breaker.record(second, True)
    assert breaker.state == "closed"
    assert (await breaker.snapshot()).outcomes == []  # window reset
    assert moves[-1] == ("half_open", "closed")
    for _ in range(4):  # a fresh window: min_calls applies again
        await call(breaker, False)
    assert breaker.state == "closed"


async def test_reopens_when_the_trials_fail_and_waits_a_new_cooldown() -> None:
    clock = FakeClock()
    breaker, moves = make(clock)
    await trip(breaker, clock)
    assert await call(breaker, True)
    assert await call(breaker, False)  # 1 of 2 failed = 50 % >= 50 %
    assert breaker.state == "open"
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "open")]
    clock.now += 29
    assert await breaker.acquire(5.0) is None
    clock.now += 1
    assert await breaker.acquire(5.0) is not None


async def test_a_hung_trial_expires_and_the_breaker_recovers() -> None:
    clock = FakeClock()
    breaker, moves = make(clock, half_open_calls=1)
    await trip(breaker, clock)
    hung = await breaker.acquire(timeout=10.0)
    assert hung is not None and await breaker.acquire(10.0) is None
    clock.now += 10  # the trial's timeout passes without a report: counted as a failure
    assert await breaker.acquire(10.0) is None
    assert breaker.state == "open"
    clock.now += 30
    assert await call(breaker, True)
    assert breaker.state == "closed"
    await breaker.record(hung, True)  # the hung call finally returns: stale, ignored
    assert (await breaker.snapshot()).outcomes == []
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                     ("open", "half_open"), ("half_open", "closed")]


async def test_an_expiry_long_ago_does_not_cost_a_second_cooldown() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, half_open_calls=1)
    await trip(breaker, clock)
    assert await breaker.acquire(timeout=5.0) is not None
    clock.now += 3600  # nobody came by for an hour: expired at +5, cooldown over at +35
    assert await call(breaker, True)
    assert breaker.state == "closed"


async def test_late_reports_from_an_earlier_state_are_ignored() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    slow = await breaker.acquire(5.0)  # admitted while closed, reports only much later
    await trip(breaker, clock)
    assert await call(breaker, True) and await call(breaker, True)
    assert breaker.state == "closed"
    assert slow is not None
    await breaker.record(slow, False)  # belongs to the window before the breaker opened
    assert (await breaker.snapshot()).outcomes == []


async def test_listeners_see_transitions_in_order_with_times() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    seen: list[tuple[str, State, State, float]] = []
    unsubscribe = breaker.on_transition(lambda *event: seen.append(event))
    breaker.on_transition(lambda *event: 1 / 0)  # a broken listener breaks nothing
    await trip(breaker, clock)
    await call(breaker, True)
    await call(breaker, True)
    assert seen == [("m", "closed", "open", 100.0), ("m", "open", "half_open", 130.0),
                    ("m", "half_open", "closed", 130.0)]
    unsubscribe()
    await trip(breaker, clock)
    assert len(seen) == 3


async def test_state_is_plain_data_in_the_store() -> None:
    clock, store = FakeClock(), MemoryBreakerStore()
    breaker = CircuitBreaker("m", Breaker(min_calls=2, window=2), store=store, clock=clock)
    await call(breaker, True)
    await call(breaker, False)
    saved = await store.load("m")
    assert saved is not None and saved.state == "open"
    assert BreakerState(**json.loads(json.dumps(asdict(saved)))) == saved
    assert (await store.load("m")) == await breaker.snapshot()
    other = CircuitBreaker("m", Breaker(), store=store, clock=clock)  # a second replica
    assert await other.acquire(5.0) is None and other.state == "open"


@pytest.mark.parametrize("min_calls", [1, 20])
async def test_min_calls_above_the_window_is_the_window(min_calls: int) -> None:
    breaker, _ = make(FakeClock(), window=3, min_calls=min_calls, failure_rate=1.0)
    for _ in range(3):
        await call(breaker, False)
    assert breaker.state == "open"
