"""Rate limits: token buckets per key (a user, an IP), in memory or shared through Redis.

A bucket holds up to `count` tokens and refills continuously at `count` per period, so at
`20/min` a burst of 20 passes at once and then one token comes back every 3 s. Each bucket is
kept as GCRA state (the "theoretical arrival time", `tat`): a single number from which the
tokens follow, `tokens = (period - (tat - now)) / interval`, capped at `count`. It is exactly
a token bucket, but one number per key means one GET and one SET in Redis, and the key can
expire precisely when the bucket would be full again (`tat <= now`), which is when forgetting
it changes nothing.

`acquire_all` draws from several buckets at once (per user AND per IP): all of them or none,
so a request rejected by the IP limit does not spend the user's token. With Redis it is one
Lua script that reads Redis's own clock (`TIME`): replicas whose clocks disagree still share
one budget exactly.

When Redis fails, `RateLimitStoreError` is raised and the caller chooses; for a few seconds
after, it is raised at once without asking Redis, and the outage is logged once
(`engine.resources.redis.Outage`), so callers need not log it. The recommended
policy for the guard stage is fail-open *to a local `MemoryRateLimiter`* with the same rates
(and a logged warning): an outage of the limiter's store should not take the whole service
down, and per-process buckets still bound abuse (to the limit times the number of replicas).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from engine.errors import EngineError
from engine.spec.types import Rate, RateStr, parse_rate

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "Decision",
    "Limit",
    "MemoryRateLimiter",
    "Rate",
    "RateLimitStoreError",
    "RateLimiter",
    "RateStr",
    "RedisRateLimiter",
    "parse_rate",
]

_EPS = 1e-6  # seconds: float error in summed intervals must not cost a token


@dataclass(frozen=True, slots=True)
class Limit:
    """One bucket to draw from: `key` names it in the store (say `user:42`), `name` names the
    rule in decisions (say `per_user`); without a name the key is reported."""

    key: str
    rate: Rate
    cost: int = 1
    name: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """`remaining`: whole tokens left in the tightest bucket (after this request when allowed,
    as they stand when rejected). `retry_after`: seconds until the request would pass, 0 when
    allowed. `limit`: the rule that rejected (the one with the longest wait), None if allowed."""

    allowed: bool
    remaining: int
    retry_after: float
    limit: str | None = None


class RateLimitStoreError(EngineError):
    """The shared store (Redis) failed; the limiter could not decide. Fail open or closed is
    the caller's policy (see the module docstring for the recommended one)."""


class RateLimiter(Protocol):
    async def acquire(self, key: str, rate: Rate | str, cost: int = 1) -> Decision: ...
    async def acquire_all(self, limits: Sequence[Limit]) -> Decision: ...
    async def aclose(self) -> None: ...


def _checked(limits: Sequence[Limit]) -> Sequence[Limit]:
    if not limits:
        raise ValueError("acquire_all needs at least one limit")
    if len({lim.key for lim in limits}) != len(limits):
        raise ValueError("each limit in one acquire_all call needs its own key")
    for lim in limits:
        if not 1 <= lim.cost <= lim.rate.count:
            # a cost above the capacity could never be granted: say so rather than wait forever
            raise ValueError(f"cost must be between 1 and the bucket size ({lim.rate.count})")
    return limits


class _Limiter(ABC):
    """What both limiters share: one bucket is the one-limit case of `acquire_all`."""

    async def acquire(self, key: str, rate: Rate | str, cost: int = 1) -> Decision:
        """Draw `cost` tokens from one bucket."""
        return await self.acquire_all([Limit(key, parse_rate(rate), cost)])

    @abstractmethod
    async def acquire_all(self, limits: Sequence[Limit]) -> Decision:
        """Draw from every bucket, or from none (see the module docstring)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the connection, if the limiter owns one."""


class MemoryRateLimiter(_Limiter):
    """One process. Calls do not await, so under asyncio each one is atomic (not thread-safe).

    Memory stays bounded by the keys active within one period: buckets that have refilled to
    full are dropped by a sweep that runs whenever the table has doubled since the last one
    (amortized O(1)); a missing bucket and a full one behave the same."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 min_sweep: int = 1024) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._min_sweep = min_sweep
        self._next_sweep = min_sweep

    async def aclose(self) -> None:
        """Nothing to release: the buckets are plain memory."""

    def __len__(self) -> int:
        return len(self._tat)

    async def acquire_all(self, limits: Sequence[Limit]) -> Decision:
        now = self._clock()
        if len(self._tat) >= self._next_sweep:
            self._tat = {key: tat for key, tat in self._tat.items() if tat > now}
            self._next_sweep = max(self._min_sweep, 2 * len(self._tat))
        plans: list[tuple[str, float]] = []
        worst: tuple[float, str] | None = None
        now_left = after_left = math.inf  # tokens in the tightest bucket: now / if granted
        for lim in _checked(limits):
            interval, period = lim.rate.interval, lim.rate.per_seconds
            tat = max(self._tat.get(lim.key, now), now)
            new_tat = tat + lim.cost * interval
            wait = new_tat - period - now
            if wait > _EPS and (worst is None or wait > worst[0]):
                worst = (wait, lim.name or lim.key)
            now_left = min(now_left, (period - (tat - now)) / interval)
            after_left = min(after_left, (period - (new_tat - now)) / interval)
            plans.append((lim.key, new_tat))
        if worst is not None:
            return Decision(False, max(0, math.floor(now_left + _EPS)), worst[0], worst[1])
        self._tat.update(plans)
        return Decision(True, max(0, math.floor(after_left + _EPS)), 0.0)


# KEYS: the buckets. ARGV: interval_us, period_us, cost for each key in turn.
# Reply: {allowed 0/1, remaining, retry_after_us, index of the rejecting key (1-based) or 0}.
# Times are microseconds from Redis's TIME; a tat is stored with %.17g so it round-trips.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats, worst, worst_wait, now_left, after_left = {}, 0, 0, math.huge, math.huge
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 2])
  local period = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local wait = new_tat - period - now
  if wait > 1 and (worst == 0 or wait > worst_wait) then worst, worst_wait = i, wait end
  now_left = math.min(now_left, (period - (tat - now)) / interval)
  after_left = math.min(after_left, (period - (new_tat - now)) / interval)
  tats[i] = new_tat
end
if worst > 0 then
  return {0, math.max(0, math.floor(now_left + 1e-6)), math.ceil(worst_wait), worst}
end
for i = 1, #KEYS do
  local ttl_ms = math.max(1, math.ceil((tats[i] - now) / 1000))
  redis.call('SET', KEYS[i], string.format('%.17g', tats[i]), 'PX', ttl_ms)
end
return {1, math.max(0, math.floor(after_left + 1e-6)), 0, 0}
"""


class RedisRateLimiter(_Limiter):
    """Shared by every process using the same Redis: one atomic script per call, on Redis's
    clock, so there is deliberately no `clock` parameter here.

    `client` is a URL (the limiter then owns the connection pool and `aclose` closes it) or a
    `redis.asyncio.Redis` the caller owns. A URL-built client fails fast (`timeout` seconds,
    one retry): a limiter sits in the request path, and a caller waiting on a dead Redis is
    worse than a caller told to choose its fail-open or fail-closed path.

    With Redis Cluster, the keys of one `acquire_all` call must share a hash slot (give them a
    `{tag}`); this class does not add one."""

    def __init__(self, client: str | Redis, *, prefix: str = "engine:ratelimit:",
                 timeout: float = 1.0) -> None:
        from engine.resources.redis import Outage, connect

        self._client, self._owned = connect(client, timeout)
        self.prefix = prefix
        self._sha: str | None = None
        self.outage = Outage("rate-limit store", "callers fall back to their local buckets")

    async def acquire_all(self, limits: Sequence[Limit]) -> Decision:
        from redis.exceptions import NoScriptError, RedisError

        keys = [self.prefix + lim.key for lim in _checked(limits)]
        if not self.outage.available():
            raise RateLimitStoreError("rate-limit store unavailable (cooling down)")
        args: list[float | int] = []
        for lim in limits:
            args += [lim.rate.interval * 1e6, lim.rate.per_seconds * 1e6, lim.cost]
        try:
            try:
                if self._sha is None:
                    self._sha = str(await self._client.script_load(_SCRIPT))
                reply = await self._client.evalsha(self._sha, len(keys), *keys, *args)
            except NoScriptError:  # Redis restarted or SCRIPT FLUSH: send the text once more
                self._sha = None
                reply = await self._client.eval(_SCRIPT, len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            self.outage.failed(exc)
            raise RateLimitStoreError(
                f"rate-limit store unavailable: {type(exc).__name__}: {exc}"
            ) from exc
        self.outage.recovered()
        allowed, remaining, retry_us, index = (int(x) for x in reply)
        if allowed:
            return Decision(True, remaining, 0.0)
        lim = limits[index - 1]
        return Decision(False, remaining, retry_us / 1e6, lim.name or lim.key)

    async def aclose(self) -> None:
        """Close the connection pool if this limiter made it (it was given a URL)."""
        if self._owned:
            await self._client.aclose()
