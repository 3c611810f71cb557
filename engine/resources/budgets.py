"""Budgets: spending limits per pipeline or per tenant, per day or month, that hold under
concurrency.

Before each model call the pyramid asks the record's `Gate` to *reserve* the call's
worst-case cost (its prompt's size, estimated from characters, and the tier's `max_tokens`, or
1,024 output tokens, at the tier's prices) against every budget that applies; a reservation
that would take spent + reserved past the limit is refused, so fifty concurrent requests
cannot all pass a check made before any of them spent. After the call the reservation is
*settled*: replaced by the real cost (nothing, when the call failed). The overshoot is
therefore bounded by the estimates' error, never by the concurrency.

A refused reservation does what the budget says: `block` fails the stage (`BudgetExceeded`;
its `on_error` decides), `degrade` skips every tier that costs something, so the free local
tier answers. Spending crossing an `alert_at` share logs a warning and POSTs the `alerts:`
webhook once per threshold and period (in the background, off the request path).

Stores: memory (one process) or Redis (every replica shares the spend; one Lua script per
reservation, so the check and the add are atomic).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError
from engine.spec.models import Budget, ModelTier, PipelineSpec

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["BudgetExceeded", "BudgetLevels", "BudgetStore", "Gate", "MemoryBudgetStore",
           "PipelineBudgets", "RedisBudgetStore", "post_alert"]

DEFAULT_OUTPUT_TOKENS = 1024
"""The output a call is assumed to need when its tier sets no `max_tokens`."""
_CHARS_PER_TOKEN = 3.0
"""Conservative (real text is ~4 characters a token): the estimate should err high."""
_log = logging.getLogger(__name__)


class BudgetExceeded(EngineError):
    """A model call would take a `block` budget past its limit."""


class BudgetStore(ABC):
    """Spent and reserved dollars per budget key."""

    @abstractmethod
    async def reserve(self, key: str, amount: float, limit: float, ttl: float) -> bool:
        """Add `amount` to the reserved dollars if spent + reserved + amount ≤ limit."""

    @abstractmethod
    async def settle(self, key: str, reserved: float, actual: float, ttl: float) -> float:
        """Release `reserved`, add `actual` to spent; returns the spend now."""

    @abstractmethod
    async def first(self, key: str, ttl: float) -> bool:
        """True the first time `key` is seen within `ttl` (one alert per threshold)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections."""


class MemoryBudgetStore(BudgetStore):
    """This process's spend. Single event loop: each method runs without awaiting, so a
    check and its add cannot interleave with another record's."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.reserved: dict[str, float] = {}
        self.seen: set[str] = set()

    async def reserve(self, key: str, amount: float, limit: float, ttl: float) -> bool:
        held = self.spent.get(key, 0.0) + self.reserved.get(key, 0.0)
        if amount > 0 and held + amount > limit:
            return False
        self.reserved[key] = self.reserved.get(key, 0.0) + amount
        return True

    async def settle(self, key: str, reserved: float, actual: float, ttl: float) -> float:
        self.reserved[key] = max(0.0, self.reserved.get(key, 0.0) - reserved)
        self.spent[key] = self.spent.get(key, 0.0) + actual
        return self.spent[key]

    async def first(self, key: str, ttl: float) -> bool:
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    async def aclose(self) -> None:
        """Nothing to release: the spend lives as long as the process."""


_RESERVE = """
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local amount = tonumber(ARGV[1])
if amount > 0 and spent + reserved + amount > tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', amount)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
_SETTLE = """
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', -tonumber(ARGV[1]))
local spent = redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return spent
"""


class RedisBudgetStore(BudgetStore):
    """Shared by every replica using the same Redis; keys expire after their period."""

    def __init__(self, client: str | Redis, *, prefix: str = "engine:budget:",
                 timeout: float = 1.0) -> None:
        from engine.resources.redis import connect

        self._client, self._owned = connect(client, timeout)
        self.prefix = prefix

    async def reserve(self, key: str, amount: float, limit: float, ttl: float) -> bool:
        reply = await self._client.eval(_RESERVE, 1, self.prefix + key, repr(amount),
                                        repr(limit), int(ttl))
        return bool(int(reply))

    async def settle(self, key: str, reserved: float, actual: float, ttl: float) -> float:
        reply = await self._client.eval(_SETTLE, 1, self.prefix + key, repr(reserved),
                                        repr(actual), int(ttl))
        return float(reply)

    async def first(self, key: str, ttl: float) -> bool:
        return bool(await self._client.set(self.prefix + "alert:" + key, 1, nx=True,
                                           ex=int(ttl)))

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()


def period_key(period: str, now: dt.datetime) -> tuple[str, float]:
    """The current period's name (UTC) and seconds until a key of it may expire."""
    if period == "day":
        return now.strftime("%Y-%m-%d"), 2 * 86400.0
    return now.strftime("%Y-%m"), 32 * 86400.0


@dataclass(slots=True)
class _Held:
    budget: Budget
    key: str
    scope: str
    period: str
    ttl: float
    amount: float


@dataclass(slots=True)
class Reservation:
    held: list[_Held] = field(default_factory=list)


class Gate:
    """One record's budgets, their scopes rendered: reserve before a call, settle after."""

    def __init__(self, owner: PipelineBudgets, scopes: Sequence[tuple[Budget, str]]) -> None:
        self.owner = owner
        self.scopes = scopes

    def estimate(self, tier: ModelTier, messages: Sequence[Mapping[str, Any]]) -> float:
        """The call's worst-case cost in USD (0 for a free tier)."""
        size = sum(len(str(message.get("content", ""))) for message in messages)
        output = tier.params.get("max_tokens") or tier.params.get("max_completion_tokens")
        return self.owner.cost(tier, int(size / _CHARS_PER_TOKEN) + 4 * len(messages),
                               int(output or DEFAULT_OUTPUT_TOKENS))

    async def reserve(self, amount: float) -> Reservation | Budget:
        """A reservation on every budget, or the first budget that refused (all or none)."""
        reservation = Reservation()
        now = self.owner.now()
        for budget, scope in self.scopes:
            period, ttl = period_key(budget.period, now)
            key = f"{self.owner.pipeline}:{scope}:{period}"
            store = self.owner.store(budget)
            if not await store.reserve(key, amount, budget.limit_usd, ttl):
                await self.settle(reservation, 0.0)
                return budget
            reservation.held.append(_Held(budget, key, scope, period, ttl, amount))
        return reservation

    async def settle(self, reservation: Reservation, actual: float) -> None:
        for held in reservation.held:
            spent = await self.owner.store(held.budget).settle(held.key, held.amount, actual,
                                                               held.ttl)
            await self.owner.alert(held, spent)


class BudgetLevels:
    """The share of each budget spent in its current period, as this process last saw it
    (the largest over a budget's scopes: one tenant near its limit is the news), for the
    `engine_budget_spend_ratio` metric. Keyed by pipeline and budget (`scope/period`), never
    by a tenant: metric labels stay few."""

    def __init__(self) -> None:
        self.shares: dict[tuple[str, str], tuple[str, float]] = {}

    def record(self, pipeline: str, held: _Held, share: float) -> None:
        key = (pipeline, f"{held.budget.scope.source}/{held.budget.period}")
        period, known = self.shares.get(key, (held.period, 0.0))
        self.shares[key] = (held.period, share if period != held.period else max(known, share))


class PipelineBudgets:
    """A pipeline's budgets and their stores; `gate(render)` per record."""

    def __init__(self, spec: PipelineSpec, stores: Callable[[str], BudgetStore],
                 cost: Callable[[ModelTier, int, int], float],
                 spawn: Callable[[Coroutine[Any, Any, Any]], None],
                 now: Callable[[], dt.datetime] | None = None,
                 levels: BudgetLevels | None = None) -> None:
        self.pipeline = spec.name
        self.levels = levels if levels is not None else BudgetLevels()
        self.budgets = spec.budgets
        self.webhook = spec.alerts.webhook or None
        self._stores = stores
        self.cost = cost
        self._spawn = spawn
        self.now = now or (lambda: dt.datetime.now(dt.UTC))

    def store(self, budget: Budget) -> BudgetStore:
        return self._stores(budget.store)

    def gate(self, render: Callable[[Any], Any]) -> Gate:
        """The record's gate; `render` renders a scope template against the record."""
        return Gate(self, [(budget, str(render(budget.scope))) for budget in self.budgets])

    async def alert(self, held: _Held, spent: float) -> None:
        self.levels.record(self.pipeline, held, spent / held.budget.limit_usd)
        for threshold in sorted(held.budget.alert_at):
            if spent < threshold * held.budget.limit_usd:
                break
            if await self.store(held.budget).first(f"{held.key}:{threshold}", held.ttl):
                payload = {"pipeline": self.pipeline, "scope": held.scope,
                           "period": held.period, "spent_usd": round(spent, 6),
                           "limit_usd": held.budget.limit_usd, "threshold": threshold}
                _log.warning("budget alert: %s", json.dumps(payload))
                if self.webhook:
                    self._spawn(post_alert(self.webhook, payload))


async def post_alert(url: str, payload: dict[str, Any]) -> None:
    """POST one alert's JSON to a pipeline's `alerts.webhook` (budgets, `engine serve`'s
    canary); run it off the request path (`Resources.spawn` logs a failure)."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=5)
    async with (aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, json=payload) as response):
        response.raise_for_status()
