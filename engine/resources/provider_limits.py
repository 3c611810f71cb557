"""Provider limits: how many calls a model may have in flight and how many it may start per
period — a quota of the provider account, so it holds across every process that shares state.

```python
lease = await limits.enter(tier.model, tier.limits, wait=5.0, hold=call_timeout)
if isinstance(lease, str):        # why no slot or token came within `wait`: ask the next tier
    ...
try: ...call...
finally: await lease.release()
```

Rate: a token bucket per model in the rate limiter (memory, or Redis's GCRA script shared by
every process). A caller without a token sleeps the limiter's `retry_after` and draws again,
while its wait allows.

Concurrency: in one process an `asyncio.Semaphore` per model and limit, which queues callers
fairly and wakes the next one the moment a slot frees. Shared through Redis, a slot is a
*lease* in a sorted set scored by its expiry (Redis's own clock): a process that dies
mid-call frees its slots when their leases expire (`hold`, the call's timeout, plus a margin)
rather than never. Taking a slot is one script (drop expired leases, count, add); a caller
that finds the set full polls at a few milliseconds with jitter — Redis offers no fair
blocking wait on a sorted set, and a list of tokens (BLPOP) would lose slots to crashes.

When Redis fails, the call goes on without the shared limit (the store logs the outage once
and leaves Redis alone for a few seconds: `engine.resources.redis.Outage`): the provider's
own 429s and the pyramid's backoff still bound it, and an outage of the shared store must not
take every model down with it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from engine.resources.limits import RateLimiter, RateLimitStoreError
from engine.spec.models import TierLimits

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Lease", "MemorySlots", "ProviderLimits", "RedisSlots", "Slots"]

_log = logging.getLogger(__name__)

LEASE_MARGIN = 5.0
"""Seconds a shared slot outlives its call's timeout before another process may reclaim it."""
POLL = (0.002, 0.02)
"""Seconds between looks at a full shared slot set: the first wait, and the cap."""


class Lease(Protocol):
    async def release(self) -> None: ...


class _Free:
    """No limit, or the store is down: nothing to hand back."""

    async def release(self) -> None:
        return None


FREE = _Free()


class Slots(Protocol):
    async def take(self, key: str, limit: int, wait: float, hold: float) -> Lease | None: ...

    async def aclose(self) -> None: ...


@dataclass
class _SemaphoreLease:
    semaphore: asyncio.Semaphore

    async def release(self) -> None:
        self.semaphore.release()


class MemorySlots:
    """One process: a semaphore per (model, limit)."""

    def __init__(self) -> None:
        self._semaphores: dict[tuple[str, int], asyncio.Semaphore] = {}

    async def take(self, key: str, limit: int, wait: float, hold: float) -> Lease | None:
        semaphore = self._semaphores.setdefault((key, limit), asyncio.Semaphore(limit))
        if not semaphore.locked():
            await semaphore.acquire()  # does not wait: a free slot
            return _SemaphoreLease(semaphore)
        try:
            await asyncio.wait_for(semaphore.acquire(), wait)
        except TimeoutError:
            return None
        return _SemaphoreLease(semaphore)

    async def aclose(self) -> None:
        return None


_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  local keep = math.ceil(tonumber(ARGV[3])) + 1
  if redis.call('TTL', KEYS[1]) < keep then
    redis.call('EXPIRE', KEYS[1], keep)
  end
  return 1
end
return 0
"""
"""Take a slot if one is free. The set's expiry only ever grows (a short call must not let
Redis drop a longer call's lease with the set), and it goes once every lease has."""


@dataclass
class _RedisLease:
    client: Redis
    key: str
    member: str

    async def release(self) -> None:
        from redis.exceptions import RedisError

        try:
            await self.client.zrem(self.key, self.member)
        except (RedisError, OSError) as exc:  # the lease expires by itself
            _log.warning("provider slot %s not released (%s); it expires", self.key, exc)


class RedisSlots:
    """Slots shared by every process using the same Redis (see the module docstring)."""

    def __init__(self, client: str | Redis, *, prefix: str = "engine:inflight:",
                 timeout: float = 1.0, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        from engine.resources.redis import Outage, connect

        self._client, self._owned = connect(client, timeout)
        self._script = self._client.register_script(_TAKE)
        self.outage = Outage("provider slots", "models are called without their shared "
                             "concurrency limit")
        self.prefix = prefix
        self._sleep = sleep
        self._rng = rng or random.Random()

    async def take(self, key: str, limit: int, wait: float, hold: float) -> Lease | None:
        """Raises `RateLimitStoreError` when Redis fails (or failed a moment ago)."""
        from redis.exceptions import RedisError

        if not self.outage.available():
            raise RateLimitStoreError("provider slots unavailable (cooling down)")
        name, member = self.prefix + key, secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        give_up, pause = loop.time() + wait, POLL[0]
        try:
            while not await self._script(keys=[name], args=[limit, member,
                                                             hold + LEASE_MARGIN]):
                left = give_up - loop.time()
                if left <= 0:
                    return None
                await self._sleep(min(left, pause * (0.5 + self._rng.random())))
                pause = min(pause * 2, POLL[1])
        except (RedisError, OSError) as exc:
            self.outage.failed(exc)
            raise RateLimitStoreError(f"provider slots unavailable: {exc}") from exc
        self.outage.recovered()
        return _RedisLease(self._client, name, member)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()


class ProviderLimits:
    """A model's slots and tokens, drawn before each call (see the module docstring)."""

    def __init__(self, slots: Slots, rates: RateLimiter, *,
                 clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.slots = slots
        self.rates = rates
        self._clock = clock
        self._sleep = sleep

    async def enter(self, model: str, limits: TierLimits | None, wait: float,
                    hold: float) -> Lease | str:
        """A lease to call `model` now, or why none came within `wait` seconds (capped by the
        tier's `max_wait`). The rate token is drawn after the slot, so a caller that never
        gets a slot spends no token."""
        if limits is None:
            return FREE
        give_up = self._clock() + min(wait, limits.max_wait)
        lease: Lease = FREE
        if limits.concurrency is not None:
            taken = await self._slot(model, limits.concurrency, give_up - self._clock(), hold)
            if taken is None:
                return f"{limits.concurrency} calls already in flight"
            lease = taken
        if limits.rate is not None and not await self._token(model, limits, give_up):
            await lease.release()
            return f"over its rate of {limits.rate}"
        return lease

    async def _slot(self, model: str, limit: int, wait: float, hold: float) -> Lease | None:
        try:
            return await self.slots.take(model, limit, max(0.0, wait), hold)
        except RateLimitStoreError:  # the store logged it: call without the shared limit
            return FREE

    async def _token(self, model: str, limits: TierLimits, give_up: float) -> bool:
        assert limits.rate is not None
        while True:
            try:
                decision = await self.rates.acquire(f"provider:{model}", limits.rate)
            except RateLimitStoreError:  # the store logged it: call without the shared rate
                return True
            if decision.allowed:
                return True
            if self._clock() + decision.retry_after > give_up:
                return False
            await self._sleep(decision.retry_after)

    async def aclose(self) -> None:
        await self.slots.aclose()
