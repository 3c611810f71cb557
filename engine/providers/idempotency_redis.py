"""Idempotency keys shared by every process using one Redis: a key answered by one replica
(or one Ray worker) replays on another, and two replicas racing on one key make one call.

Per key, two Redis entries: `done:<key>`, the result as JSON, expiring `ttl` seconds after it
was produced; and `run:<key>`, the in-flight marker (`SET NX` with a lease), held while one
process calls. A caller that finds a result returns it; one that takes the marker calls and
stores the result; one that finds the marker taken polls (a few ms, growing to 100 ms) until
the result appears, or the marker goes away without one (that call failed: failures are not
remembered, so it takes the marker and calls itself) or expires (its holder died).

Within one process, callers of one key share a single flight first (a `MemoryIdempotency`,
which also keeps recent results in memory), so only one of them talks to Redis. Compared to
the memory store's contract, one thing differs: a caller waiting on *another process's*
failed call does not get that exception; it makes the call itself.

Values must be JSON (a generate stage's output, a stored HTTP response). When Redis fails,
calls go through unshared, with one logged warning: a store outage must not fail requests.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from engine.providers.idempotency import MemoryIdempotency

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisIdempotency"]

T = TypeVar("T")

LEASE = 120.0
"""Seconds an in-flight marker lasts if its holder never clears it (the process died)."""
POLL = (0.005, 0.1)
"""Seconds between looks for another process's result: the first wait, and the cap."""


class RedisIdempotency:
    def __init__(self, client: str | Redis, ttl: float, *, prefix: str = "engine:idem:",
                 timeout: float = 1.0, max_entries: int = 10_000) -> None:
        from engine.resources.redis import Outage, connect

        self._client, self._owned = connect(client, timeout)
        self.ttl = ttl
        self.prefix = prefix
        self._flight = MemoryIdempotency(ttl, max_entries=max_entries)
        self.outage = Outage("idempotency store",
                             "calls are not deduplicated across processes")

    async def run(self, key: str, factory: Callable[[], Awaitable[T]]) -> T:
        return await self._flight.run(key, lambda: self._shared(key, factory))

    async def _shared(self, key: str, factory: Callable[[], Awaitable[T]]) -> T:
        from redis.exceptions import RedisError

        done, marker, token = (self.prefix + "done:" + key, self.prefix + "run:" + key,
                               secrets.token_hex(8))
        if not self.outage.available():
            return await factory()
        try:
            found = await self._claim(done, marker, token)
        except (RedisError, OSError) as exc:
            self.outage.failed(exc)
            return await factory()
        self.outage.recovered()
        if found is not None:
            return cast(T, found[0])
        try:
            value = await factory()
            await self._quietly(self._store(done, value))
        finally:
            await self._quietly(self._client.eval(_RELEASE, 1, marker, token))
        return value

    async def _claim(self, done: str, marker: str, token: str) -> tuple[Any] | None:
        """Another call's result (in a 1-tuple), or None once the marker is ours."""
        pause = POLL[0]
        while True:
            raw = await self._client.get(done)
            if raw is not None:
                return (json.loads(raw),)
            if await self._client.set(marker, token, nx=True, px=int(LEASE * 1000)):
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL[1])

    async def _store(self, done: str, value: Any) -> None:
        """Keep the result for other processes: as JSON, odd values as their text (the memory
        store keeps anything; a value JSON cannot hold must not fail a finished call)."""
        await self._client.set(done, json.dumps(value, default=str), px=int(self.ttl * 1000))

    async def _quietly(self, command: Awaitable[Any]) -> None:
        """A write after the call: if it fails the answer still goes to the caller."""
        from redis.exceptions import RedisError

        try:
            await command
        except (RedisError, OSError) as exc:
            self.outage.failed(exc)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""Clear the in-flight marker only if it is still ours (a lease that expired may be another
process's by now)."""

