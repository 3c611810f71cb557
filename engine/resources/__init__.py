"""Resources: the long-lived things shared by every record a process runs.

Model clients, circuit breakers, retry budgets and the idempotency store are built once and
handed to stages through `Setup.resources`, never kept in globals, so a test can give a
pipeline a fake clock and sleep, and `engine serve` can share one set across pipelines (and,
in a later issue, back the stores with Redis so replicas behave as one).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from engine.providers.breaker import Breakers, BreakerStore, CircuitBreaker, MemoryBreakerStore
from engine.providers.client import ModelClient
from engine.providers.idempotency import IdempotencyStore, MemoryIdempotency
from engine.providers.retry import RetryBudget
from engine.resources.limits import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from engine.spec.models import Breaker

if TYPE_CHECKING:
    from engine.resources.embeddings import Embedder

__all__ = ["Resources"]

IDEMPOTENCY_TTL = 24 * 3600.0


class Resources:
    """Shared per process. Breaker settings for a model come from the first pipeline using it."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        breaker_store: BreakerStore | None = None,
        idempotency: IdempotencyStore | None = None,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.models = ModelClient()
        self.idempotency = idempotency or MemoryIdempotency(IDEMPOTENCY_TTL, clock=clock)
        self._breaker_store = breaker_store or MemoryBreakerStore()
        self._breakers: Breakers | None = None
        self._budgets: dict[str, RetryBudget] = {}
        self._limiters: dict[str | None, RateLimiter] = {}
        self._embedder: Embedder | None = None

    def breaker(self, model: str, spec: Breaker) -> CircuitBreaker:
        if self._breakers is None:
            self._breakers = Breakers(spec, store=self._breaker_store, clock=self.clock)
        return self._breakers.get(model)

    async def aclose(self) -> None:
        """Release connections; the owner of the resources calls it when the run ends."""
        await self.models.aclose()
        for limiter in self._limiters.values():
            await limiter.aclose()
        self._limiters.clear()

    def rate_limiter(self, redis_url: str | None) -> RateLimiter:
        """This process's buckets, or the buckets shared by every process using `redis_url`."""
        if redis_url not in self._limiters:
            if redis_url is None:
                self._limiters[None] = MemoryRateLimiter(clock=self.clock)
            else:
                self._limiters[redis_url] = RedisRateLimiter(redis_url)
        return self._limiters[redis_url]

    def embedder(self) -> Embedder:
        """The local embedding model (all-MiniLM-L6-v2), loaded on first use, shared."""
        if self._embedder is None:
            from engine.resources.embeddings import Embedder

            self._embedder = Embedder()
        return self._embedder

    def retry_budget(self, model: str) -> RetryBudget:
        """One budget per model: an outage of one provider must not spend the others'."""
        if model not in self._budgets:
            self._budgets[model] = RetryBudget(clock=self.clock)
        return self._budgets[model]
