"""The fallback pyramid: tiers in order, retries within a tier, all inside the deadline.

For each tier: skip it at once if its breaker is open; otherwise call it with the tier's
timeout capped by what is left of the budget (minus a small reserve, so the static response
is always reachable before the deadline). A retryable failure (timeout, connection, 429, 5xx,
malformed) is retried on the same tier with exponential backoff and jitter — honouring a
429's `Retry-After` when it fits the budget, abandoning the tier when it does not — while the
retry budget allows; anything else moves to the next tier. Every attempt, skip and wait is
an `Attempt` in the result, so the run trace says which tier answered and why the others did
not. A stream that broke after its first token is never retried: it propagates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from engine.providers.client import Completion, StreamInterrupted
from engine.providers.errors import classify
from engine.providers.retry import Backoff, RetryBudget
from engine.resources import Resources
from engine.spec.models import Breaker, ModelTier, Retry

__all__ = ["Attempt", "Pyramid", "TierOutcome"]

MIN_CALL = 0.05
"""Seconds: below this much budget a call is not worth starting."""


def reserve(remaining: float) -> float:
    """Time kept back from every call so the stage can still answer (static response)."""
    return min(0.25, remaining * 0.05)


@dataclass(frozen=True, slots=True)
class Attempt:
    tier: str
    attempt: int
    outcome: str
    """ok, a failure kind (timeout, rate_limit, server...), breaker_open, no_time,
    retry_budget or retry_after_too_long."""
    duration_ms: float = 0.0
    detail: str | None = None
    wait_ms: float | None = None
    """The backoff slept after this attempt, before the next one on the same tier."""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True, slots=True)
class TierOutcome:
    tier: str | None
    completion: Completion | None
    attempts: list[Attempt]


class Pyramid:
    """Built once per stage; `call` runs once per record."""

    def __init__(self, tiers: Sequence[tuple[str, ModelTier]], retry: Retry, breaker: Breaker,
                 resources: Resources, *, stream: bool = False) -> None:
        self.tiers = list(tiers)
        self.retry = retry
        self.breaker_spec = breaker
        self.resources = resources
        self.stream = stream
        self.backoff = Backoff.from_spec(retry, resources.rng)

    async def call(self, messages: list[dict[str, Any]], remaining: Callable[[], float],
                   headers: Mapping[str, str] | None = None) -> TierOutcome:
        attempts: list[Attempt] = []
        for name, tier in self.tiers:
            completion = await self._tier(name, tier, messages, remaining, headers, attempts)
            if completion is not None:
                return TierOutcome(name, completion, attempts)
        return TierOutcome(None, None, attempts)

    async def _tier(self, name: str, tier: ModelTier, messages: list[dict[str, Any]],
                    remaining: Callable[[], float], headers: Mapping[str, str] | None,
                    attempts: list[Attempt]) -> Completion | None:
        resources = self.resources
        breaker = resources.breaker(tier.model, self.breaker_spec)
        budget = resources.retry_budget(tier.model)
        budget.record_request()
        for attempt in range(1, self.retry.attempts + 1):
            left = remaining()
            timeout = min(tier.timeout or left, left - reserve(left))
            if timeout < MIN_CALL:
                attempts.append(Attempt(name, attempt, "no_time"))
                return None
            permit = await breaker.acquire(timeout)
            if permit is None:
                attempts.append(Attempt(name, attempt, "breaker_open", detail=breaker.state))
                return None
            started = time.perf_counter()
            try:
                completion = await resources.models.complete(
                    tier, messages, timeout=timeout, stream=self.stream, headers=headers)
            except StreamInterrupted:
                await breaker.record(permit, False)
                raise
            except Exception as exc:
                failure = classify(exc)
                await breaker.record(permit, not failure.trips_breaker)
                elapsed = (time.perf_counter() - started) * 1000
                if not failure.retryable or attempt == self.retry.attempts:
                    attempts.append(Attempt(name, attempt, failure.kind, elapsed, failure.message))
                    return None
                wait = self.backoff.delay(attempt, failure.retry_after)
                verdict = self._may_retry(wait, failure.retry_after, remaining(), budget)
                attempts.append(Attempt(name, attempt, failure.kind, elapsed, failure.message,
                                        wait * 1000 if verdict is None else None))
                if verdict is not None:
                    attempts.append(Attempt(name, attempt, verdict))
                    return None
                await resources.sleep(wait)
                continue
            await breaker.record(permit, True)
            elapsed = (time.perf_counter() - started) * 1000
            attempts.append(Attempt(name, attempt, "ok", elapsed))
            return completion
        return None

    @staticmethod
    def _may_retry(wait: float, retry_after: float | None, left: float,
                   budget: RetryBudget) -> str | None:
        """None if a retry after `wait` seconds is allowed, else why not."""
        if wait + MIN_CALL + reserve(left) > left:
            return "retry_after_too_long" if retry_after is not None else "no_time"
        if not budget.try_acquire():
            return "retry_budget"
        return None
