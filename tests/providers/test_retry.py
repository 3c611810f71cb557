"""Backoff schedules and jitter bounds, the retry budget under total failure and at low
traffic, and the retry loop. Fake clock and seeded RNG: no test sleeps for real."""

from __future__ import annotations

import random

import httpx
import openai
import pytest

from engine.providers.retry import Backoff, RetryBudget
from engine.spec.models import Retry


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_schedule_without_jitter_doubles_then_caps() -> None:
    backoff = Backoff(1.0, 8.0, "none")
    assert [backoff.delay(n) for n in range(1, 6)] == [1, 2, 4, 8, 8]
    assert backoff.delay(500) == 8  # no overflow far down the schedule
    with pytest.raises(ValueError):
        backoff.delay(0)


def test_from_spec_uses_the_spec() -> None:
    backoff = Backoff.from_spec(Retry(backoff=0.5, max_backoff=3, jitter="none"))
    assert [backoff.delay(n) for n in range(1, 5)] == [0.5, 1, 2, 3]
    assert Backoff.from_spec(Retry()).jitter == "full"


def test_full_jitter_stays_within_zero_and_the_ceiling() -> None:
    backoff = Backoff(1.0, 8.0, "full", random.Random(7))
    for n in range(1, 7):
        draws = [backoff.delay(n) for _ in range(2000)]
        assert all(0 <= d <= backoff.ceiling(n) for d in draws)
        assert len(set(draws)) > 1900  # actually spread out, not a constant
        assert min(draws) < 0.1 * backoff.ceiling(n) and max(draws) > 0.9 * backoff.ceiling(n)


def test_equal_jitter_keeps_half_the_ceiling() -> None:
    backoff = Backoff(1.0, 8.0, "equal", random.Random(11))
    for n in range(1, 7):
        top = backoff.ceiling(n)
        draws = [backoff.delay(n) for _ in range(2000)]
        assert all(top / 2 <= d <= top for d in draws)
        assert len(set(draws)) > 1900


def test_seeded_rng_reproduces_the_schedule() -> None:
    first = Backoff(rng=random.Random(3))
    second = Backoff(rng=random.Random(3))
    assert [first.delay(n) for n in range(1, 5)] == [second.delay(n) for n in range(1, 5)]


def test_retry_after_is_a_floor_not_capped() -> None:
    backoff = Backoff(1.0, 8.0, "none")
    assert backoff.delay(1, retry_after=30.0) == 30.0
    assert backoff.delay(3, retry_after=0.5) == 4.0


def test_budget_caps_retries_at_the_ratio_under_total_failure() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=1.0, window=10.0, clock=clock)
    retries = 0
    for _ in range(1000):  # 1,000 requests over one window, each failing and retrying twice
        budget.record_request()
        retries += sum(budget.try_acquire() for _ in range(2))
        clock.now += 0.0099
    assert retries <= 0.2 * 1000 + budget.floor
    assert retries >= 0.2 * 1000  # the budget is spent, not refused outright


def test_budget_holds_in_every_window_of_a_long_outage() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.5, window=10.0, clock=clock)
    granted: list[float] = []
    for _ in range(5000):  # 100 requests per second for 50 seconds
        budget.record_request()
        if budget.try_acquire():
            granted.append(clock.now)
        clock.now += 0.01
    for start in range(0, 41):
        in_window = [t for t in granted if start <= t < start + 10]
        assert len(in_window) <= 0.2 * 1000 + budget.floor + 1


def test_floor_lets_a_lone_request_retry_and_refills() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.2, window=10.0, clock=clock)
    budget.record_request()
    assert [budget.try_acquire() for _ in range(3)] == [True, True, False]  # floor = 2
    clock.now += 10.0
    assert budget.try_acquire()


def test_budget_without_floor_refuses_a_lone_request() -> None:
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0, clock=FakeClock())
    budget.record_request()
    assert not budget.try_acquire()


def rate_limited(retry_after: str | None = None) -> openai.RateLimitError:
    headers = {"retry-after": retry_after} if retry_after else {}
    request = httpx.Request("POST", "http://x")
    return openai.RateLimitError("slow", response=httpx.Response(429, headers=headers,
                                                                 request=request), body=None)
