"""Idempotency keys: the same request, sent twice (a client retry, a replayed batch record, two
replicas racing), costs one model call and gets one answer.

Contract of `IdempotencyStore.run(key, factory)`:
- a result produced for `key` less than `ttl` seconds ago is returned without calling
  `factory` (the TTL runs from when the result was produced; reading it does not extend it);
- callers that arrive while the first call for `key` is in flight await that same call
  (single flight): `factory` runs exactly once for all of them, and they all get its result,
  or all get its exception;
- a failed call is not remembered: the next caller after it calls `factory` again;
- the key must already carry everything that makes two requests "the same" (tenant, stage,
  input hash): the store does not look inside.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

__all__ = ["IdempotencyStore", "MemoryIdempotency"]

T = TypeVar("T")


class IdempotencyStore(Protocol):
    async def run(self, key: str, factory: Callable[[], Awaitable[T]]) -> T: ...


class MemoryIdempotency:
    """One process, bounded: at most `max_entries` results, least recently used evicted first;
    expired results are dropped when looked up or when they reach the LRU end.

    The shared call runs as its own task, so a caller that is cancelled (its request timed
    out) does not cancel the call the others are waiting on; the result is still stored."""

    def __init__(self, ttl: float, *, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl must be > 0 and max_entries ≥ 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._done: OrderedDict[str, tuple[float, Any]] = OrderedDict()  # key -> (expiry, value)
        self._running: dict[str, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        return len(self._done)

    async def run(self, key: str, factory: Callable[[], Awaitable[T]]) -> T:
        now = self._clock()
        entry = self._done.get(key)
        if entry is not None:
            if entry[0] > now:
                self._done.move_to_end(key)
                return cast(T, entry[1])
            del self._done[key]
        future = self._running.get(key)
        if future is None:
            future = asyncio.ensure_future(factory())
            self._running[key] = future
            future.add_done_callback(lambda done: self._finish(key, done))
        return cast(T, await asyncio.shield(future))

    def _finish(self, key: str, future: asyncio.Future[Any]) -> None:
        if self._running.get(key) is future:
            del self._running[key]
        if future.cancelled() or future.exception() is not None:
            return  # not cached; calling exception() also marks it retrieved
        now = self._clock()
        self._done[key] = (now + self.ttl, future.result())
        self._done.move_to_end(key)
        while self._done:
            oldest_key, (expiry, _) = next(iter(self._done.items()))
            if expiry > now and len(self._done) <= self.max_entries:
                break
            del self._done[oldest_key]
