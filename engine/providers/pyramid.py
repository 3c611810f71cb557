"""The fallback pyramid: tiers in order, retries within a tier, all inside the deadline.

For each tier: wait for a slot and a token when the model has provider `limits` (across
processes: see engine/resources/provider_limits.py), skip it at once if its breaker is open;
otherwise call it with the tier's timeout capped by what is left of the budget (minus a small
reserve, so the static response is always reachable before the deadline). A retryable failure
(timeout, connection, 429, 5xx, malformed) is retried on the same tier with exponential
backoff and jitter — honouring a 429's `Retry-After` when it fits the budget, abandoning the
tier when it does not — while the retry budget allows; anything else moves to the next tier.
Every attempt, skip and wait is an `Attempt` in the result, so the run trace says which tier
answered and why the others did not. A stream that broke after its first token is never
retried: it propagates.

A caller that needs more than text (a label from a set, JSON that parses) passes `accept`: an
answer it rejects is an `invalid` attempt and the next tier is asked, as for a failure; and
`params`, the request parameters per tier (a `response_format` the tier supports, say).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from engine.providers.breaker import CircuitBreaker
from engine.providers.client import Completion, StreamInterrupted
from engine.providers.errors import Failure, classify
from engine.providers.retry import Backoff, RetryBudget
from engine.resources import Resources
from engine.resources.budgets import BudgetExceeded, Gate, Reservation
from engine.spec.models import Breaker, ModelTier, Retry

__all__ = ["Accept", "Attempt", "Params", "Pyramid", "TierOutcome"]

Accept = Callable[[Completion], str | None]
"""None if a completion is usable, else why not (the attempt's detail)."""
Params = Callable[[ModelTier], Mapping[str, Any]]
"""The extra request parameters for a tier."""

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
    retry_budget, retry_after_too_long, not_configured (an empty api_key), invalid (the
    caller's `accept` rejected the answer), budget (a `degrade` budget skipped the tier) or
    throttled (the model's `limits` gave no slot or token within the wait)."""
    duration_ms: float = 0.0
    detail: str | None = None
    wait_ms: float | None = None
    """The backoff slept after this attempt, before the next one on the same tier."""
    breaker: str | None = None
    """The breaker's transition during this attempt, e.g. `closed→open`."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tier": self.tier, "attempt": self.attempt,
                               "outcome": self.outcome, "duration_ms": self.duration_ms}
        for name in ("detail", "wait_ms", "breaker"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class _Request:
    """One record's call, as every tier and attempt makes it."""

    messages: list[dict[str, Any]]
    headers: Mapping[str, str] | None
    params: Mapping[str, Any] | None
    accept: Accept | None
    gate: Gate | None = None
    on_token: Callable[[str], None] | None = None


@dataclass(frozen=True, slots=True)
class TierOutcome:
    tier: str | None
    completion: Completion | None
    attempts: list[Attempt]

    def call_note(self) -> dict[str, Any]:
        """This call as the run trace records it, for metrics and reports: the tier that
        answered, its model, tokens and cost, and every attempt as [tier, outcome]."""
        completion = self.completion
        note: dict[str, Any] = {
            "tier": self.tier, "model": completion.model if completion else None,
            "input_tokens": completion.input_tokens if completion else 0,
            "output_tokens": completion.output_tokens if completion else 0,
            "cost_usd": completion.cost_usd if completion else 0.0,
            "attempts": [[a.tier, a.outcome] for a in self.attempts]}
        if completion is not None and completion.ttft is not None:
            note["ttft_ms"] = round(completion.ttft * 1000, 3)
        return note

    def failed(self) -> str:
        """Why no tier answered, one attempt at a time, for an error message."""
        summary = "; ".join(f"{a.tier} #{a.attempt}: {a.outcome}" for a in self.attempts)
        return f"every tier failed ({summary})"


async def _reserve(request: _Request, name: str, number: int, tier: ModelTier,
                   attempts: list[Attempt]) -> Reservation | Literal[False] | None:
    """The call's budget reservation; None without budgets; False when a `degrade` budget
    skips this tier (recorded as an attempt). A `block` budget raises."""
    if request.gate is None:
        return None
    outcome = await request.gate.reserve(request.gate.estimate(tier, request.messages))
    if isinstance(outcome, Reservation):
        return outcome
    if outcome.on_exceed == "block":
        raise BudgetExceeded(f"the {outcome.period} budget of ${outcome.limit_usd:g} "
                             f"({outcome.scope}) would be exceeded")
    attempts.append(Attempt(name, number, "budget", detail=f"{outcome.period} budget of "
                                                           f"${outcome.limit_usd:g} reached"))
    return False


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _moved(before: str, breaker: CircuitBreaker) -> str | None:
    return None if breaker.state == before else f"{before}→{breaker.state}"


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
                   headers: Mapping[str, str] | None = None, *, params: Params | None = None,
                   accept: Accept | None = None, gate: Gate | None = None,
                   on_token: Callable[[str], None] | None = None) -> TierOutcome:
        """Ask the tiers in order. With a budget `gate`, each call first reserves its
        worst-case cost: a `degrade` budget that refuses skips the tier (a `budget` attempt),
        a `block` one raises `BudgetExceeded`. A streaming pyramid hands each piece of text
        to `on_token` as it arrives."""
        attempts: list[Attempt] = []
        for name, tier in self.tiers:
            request = _Request(messages, headers, params(tier) if params else None, accept,
                               gate, on_token)
            completion = await self._tier(name, tier, request, remaining, attempts)
            if completion is not None:
                return TierOutcome(name, completion, attempts)
        return TierOutcome(None, None, attempts)

    async def _tier(self, name: str, tier: ModelTier, request: _Request,
                    remaining: Callable[[], float], attempts: list[Attempt]
                    ) -> Completion | None:
        if tier.api_key is not None and not tier.api_key.get_secret_value():
            attempts.append(Attempt(name, 0, "not_configured", detail="its api_key is empty"))
            return None
        budget = self.resources.retry_budget(tier.model)
        budget.record_request()
        for number in range(1, self.retry.attempts + 1):
            left = remaining()
            timeout = min(tier.timeout or left, left - reserve(left))
            if timeout < MIN_CALL:
                attempts.append(Attempt(name, number, "no_time"))
                return None
            gated = await self._gated(name, number, tier, request, timeout, attempts)
            if gated is None:
                return None  # a degrade budget skips this tier
            result, attempt = gated
            if isinstance(result, Completion) and request.accept is not None:
                problem = request.accept(result)
                if problem is not None:
                    attempts.append(replace(attempt, outcome="invalid", detail=problem))
                    return None
            if isinstance(result, Completion) or result is None:
                attempts.append(attempt)
                return result
            if not result.retryable or number == self.retry.attempts:
                attempts.append(attempt)
                return None
            wait = self.backoff.delay(number, result.retry_after)
            verdict = self._may_retry(wait, result.retry_after, remaining(), budget)
            if verdict is not None:
                attempts += [attempt, Attempt(name, number, verdict)]
                return None
            attempts.append(replace(attempt, wait_ms=round(wait * 1000, 3)))
            await self.resources.sleep(wait)
        return None

    async def _gated(self, name: str, number: int, tier: ModelTier, request: _Request,
                     timeout: float, attempts: list[Attempt]
                     ) -> tuple[Completion | Failure | None, Attempt] | None:
        """An attempt inside its budget reservation: reserved before, settled after; None
        when a `degrade` budget skips the tier."""
        reservation = await _reserve(request, name, number, tier, attempts)
        if reservation is False:
            return None
        result, attempt = await self._attempt(name, number, tier, request, timeout)
        if reservation is not None and request.gate is not None:
            await request.gate.settle(reservation, result.cost_usd
                                      if isinstance(result, Completion) else 0.0)
        return result, attempt

    async def _attempt(self, name: str, number: int, tier: ModelTier, request: _Request,
                       timeout: float) -> tuple[Completion | Failure | None, Attempt]:
        """One call within the model's provider limits (when it has any): a completion, a
        failure, or None (no slot or token in time, or no time left after the wait)."""
        if tier.limits is None:
            return await self._call(name, number, tier, request, timeout)
        limits = self.resources.provider_limits()
        started = time.perf_counter()
        lease = await limits.enter(tier.model, tier.limits, wait=timeout - MIN_CALL,
                                   hold=timeout)
        if isinstance(lease, str):
            return None, Attempt(name, number, "throttled", _ms(started), lease)
        try:
            left = timeout - (time.perf_counter() - started)
            if left < MIN_CALL:
                return None, Attempt(name, number, "no_time", _ms(started))
            return await self._call(name, number, tier, request, left)
        finally:
            await lease.release()

    async def _call(self, name: str, number: int, tier: ModelTier, request: _Request,
                    timeout: float) -> tuple[Completion | Failure | None, Attempt]:
        """One call through the tier's breaker: a completion, a failure, or None (open)."""
        breaker = self.resources.breaker(tier.model, self.breaker_spec)
        before = breaker.state
        permit = await breaker.acquire(timeout)
        if permit is None:
            return None, Attempt(name, number, "breaker_open", breaker=_moved(before, breaker))
        started = time.perf_counter()
        try:
            completion = await self.resources.models.complete(
                tier, request.messages, timeout=timeout, stream=self.stream,
                headers=request.headers, params=request.params, on_token=request.on_token)
        except StreamInterrupted:
            await breaker.record(permit, False)
            raise
        except Exception as exc:
            failure = classify(exc)
            await breaker.record(permit, not failure.trips_breaker)
            if not failure.next_tier:
                raise  # not a provider failure but a bug of ours: every tier would repeat it
            return failure, Attempt(name, number, failure.kind, _ms(started), failure.message,
                                    breaker=_moved(before, breaker))
        await breaker.record(permit, True)
        return completion, Attempt(name, number, "ok", _ms(started),
                                   breaker=_moved(before, breaker))

    @staticmethod
    def _may_retry(wait: float, retry_after: float | None, left: float,
                   budget: RetryBudget) -> str | None:
        """None if a retry after `wait` seconds is allowed, else why not."""
        if wait + MIN_CALL + reserve(left) > left:
            return "retry_after_too_long" if retry_after is not None else "no_time"
        if not budget.try_acquire():
            return "retry_budget"
        return None
