"""Circuit-breaker state shared by every process using one Redis: a breaker opened by the
failures one replica saw is open in all of them, at once.

Each breaker's `BreakerState` is one JSON string (`engine:breaker:<name>`, kept a day after
its last change: a breaker nobody used for a day has nothing worth keeping). A breaker's
load-modify-save runs under a Redis lock (`SET NX PX`, released by token), so two processes
never both count a half-open trial or both miss a failure; the lock expires by itself if its
holder dies. The breaker must run on the wall clock (`clock=time.time`): opened-at times and
trial expiries are compared across machines.

When Redis fails, the breaker carries on with this process's own copy of the state (a memory
store) until it is back (`engine.resources.redis.Outage`: logged once, Redis left alone for
a few seconds so a hanging server does not cost every call its timeout): it still protects
this process, and a store outage must not stop model calls.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import asdict
from typing import TYPE_CHECKING

from engine.providers.breaker import BreakerState, MemoryBreakerStore

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisBreakerStore"]

KEEP = 86_400
"""Seconds a breaker's state outlives its last change."""
LOCK_TTL = 2.0
"""Seconds a load-modify-save may hold the lock (it takes a few round trips)."""
LOCK_WAIT = 1.0
"""Seconds to wait for the lock before going on without it."""


class RedisBreakerStore:
    def __init__(self, client: str | Redis, *, prefix: str = "engine:breaker:",
                 timeout: float = 1.0) -> None:
        from engine.resources.redis import Outage, connect

        self._client, self._owned = connect(client, timeout)
        self.prefix = prefix
        self._local = MemoryBreakerStore()
        self.outage = Outage("breaker store", "each process keeps its own breaker state")

    async def load(self, name: str) -> BreakerState | None:
        from redis.exceptions import RedisError

        if not self.outage.available():
            return await self._local.load(name)
        try:
            raw = await self._client.get(self.prefix + name)
        except (RedisError, OSError) as exc:
            self.outage.failed(exc)
            return await self._local.load(name)
        self.outage.recovered()
        return None if raw is None else BreakerState(**json.loads(raw))

    async def save(self, name: str, state: BreakerState) -> None:
        from redis.exceptions import RedisError

        await self._local.save(name, state.copy())
        if not self.outage.available():
            return
        try:
            await self._client.set(self.prefix + name, json.dumps(asdict(state)), ex=KEEP)
        except (RedisError, OSError) as exc:
            self.outage.failed(exc)

    def locked(self, name: str) -> AbstractAsyncContextManager[None]:
        return self._locked(name)

    @asynccontextmanager
    async def _locked(self, name: str) -> AsyncIterator[None]:
        from redis.exceptions import LockError, RedisError

        lock = self._client.lock(f"{self.prefix}lock:{name}", timeout=LOCK_TTL,
                                 sleep=0.002, blocking_timeout=LOCK_WAIT)
        held = False
        if self.outage.available():
            try:
                held = bool(await lock.acquire())
            except (RedisError, OSError) as exc:
                self.outage.failed(exc)
        try:
            yield
        finally:
            if held:
                with suppress(LockError, RedisError, OSError):  # expired: it freed itself
                    await lock.release()

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()
