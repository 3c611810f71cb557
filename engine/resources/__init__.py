"""Resources: the long-lived things shared by every record a process runs.

Model clients, circuit breakers, retry budgets and the idempotency store are built once and
handed to stages through `Setup.resources`, never kept in globals, so a test can give a
pipeline a fake clock and sleep, and `engine serve` can share one set across pipelines.

`redis_url` makes N processes (replicas of `engine serve`, Ray workers, several `engine run`)
behave as one: circuit breakers, idempotency keys, the models' provider limits and the
guard's rate limits are then shared through that Redis, and so are the caches and budgets the
pipeline leaves on `memory` (one that names its own redis:// URL keeps it). Breakers then run
on the wall clock, which every process shares.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.providers.breaker import BreakerStore, CircuitBreaker, MemoryBreakerStore
from engine.providers.client import ModelClient
from engine.providers.idempotency import IdempotencyStore, MemoryIdempotency
from engine.providers.retry import RetryBudget
from engine.resources.budgets import BudgetLevels
from engine.resources.limits import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from engine.spec.models import Breaker, Resource

if TYPE_CHECKING:
    from engine.cache.store import CacheStore
    from engine.index import DocumentIndex
    from engine.resources.budgets import BudgetStore, PipelineBudgets
    from engine.resources.embeddings import Embedder
    from engine.resources.provider_limits import ProviderLimits
    from engine.spec.models import PipelineSpec

__all__ = ["Resources"]

IDEMPOTENCY_TTL = 24 * 3600.0
_log = logging.getLogger(__name__)


def _digest(spec: Breaker) -> str:
    return hashlib.blake2b(spec.model_dump_json().encode(), digest_size=4).hexdigest()


class Resources:
    """Shared per process (and, in `engine serve`, by every pipeline it serves)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        breaker_store: BreakerStore | None = None,
        idempotency: IdempotencyStore | None = None,
        redis_url: str | None = None,
    ) -> None:
        self.clock = clock
        self.wall = wall
        """Wall-clock seconds, for what must agree across processes (cache entry ages)."""
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.models = ModelClient()
        self.redis_url = redis_url
        """Where state shared by processes lives; None: each process keeps its own."""
        self.idempotency = idempotency or _idempotency(redis_url, clock)
        self._breaker_store = breaker_store or _breaker_store(redis_url)
        self._breaker_clock = wall if redis_url else clock
        self._provider_limits: ProviderLimits | None = None
        self._breakers: dict[tuple[str, Breaker], CircuitBreaker] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._limiters: dict[str | None, RateLimiter] = {}
        self._embedder: Embedder | None = None
        self._caches: dict[str, CacheStore] = {}
        self._budget_stores: dict[str, BudgetStore] = {}
        self.budget_levels = BudgetLevels()
        """The share of each budget spent, for metrics."""
        self._indexes: dict[tuple[str, Path], DocumentIndex] = {}
        self._background: set[asyncio.Task[Any]] = set()

    def breaker(self, model: str, spec: Breaker) -> CircuitBreaker:
        """The breaker for `model` under `spec`: pipelines sharing these resources with
        different `defaults.breaker` settings each keep their own breaker for the model."""
        key = (model, spec)
        if key not in self._breakers:
            name = model if spec == Breaker() else f"{model}@{_digest(spec)}"
            self._breakers[key] = CircuitBreaker(name, spec, store=self._breaker_store,
                                                 clock=self._breaker_clock)
        return self._breakers[key]

    async def settle(self) -> None:
        """Wait for the background work started so far (stores in flight, say)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def aclose(self) -> None:
        """Finish background work, release connections; the owner calls it at the end."""
        await self.settle()
        await self.models.aclose()
        for limiter in self._limiters.values():
            await limiter.aclose()
        for cache in self._caches.values():
            await cache.aclose()
        for store in self._budget_stores.values():
            await store.aclose()
        for shared in (self._breaker_store, self.idempotency, self._provider_limits):
            close = getattr(shared, "aclose", None)
            if close is not None:
                await close()
        self._provider_limits = None
        self._limiters.clear()
        self._caches.clear()
        self._budget_stores.clear()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` off the request's critical path (storing a cache entry, say); `aclose`
        waits for it. A failure is logged, never raised into a request."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.warning("background work failed: %r", task.exception())

    def cache(self, name: str, spec: Resource) -> CacheStore:
        """The cache resource `name`: in this process, or shared through Redis."""
        if name not in self._caches:
            from engine.cache.store import open_store

            backend = self._shared(str(getattr(spec, "backend", "memory")))
            max_entries = int(getattr(spec, "max_entries", 100_000))
            self._caches[name] = open_store(backend, max_entries=max_entries, clock=self.wall)
        return self._caches[name]

    def index(self, name: str, spec: Resource, base_dir: Path) -> DocumentIndex:
        """The index resource `name` of the pipeline in `base_dir`: one per process, so it is
        embedded and loaded once however many stages (or pipelines) search it. Keyed by folder
        too, because that is where it is persisted: in `engine serve`, two pipelines' `kb` in
        two folders are two indexes. Raises ValueError for settings that differ from those of
        the index already open there, or (pydantic's) for settings that are wrong."""
        from engine.index import DocumentIndex, IndexSettings

        settings = IndexSettings.model_validate(spec.model_extra or {})
        key = (name, base_dir.resolve())
        if key not in self._indexes:
            self._indexes[key] = DocumentIndex(name, settings, key[1], self.embedder())
        elif self._indexes[key].settings != settings:
            raise ValueError(f"index '{name}' of {key[1]} is already open with other settings")
        return self._indexes[key]

    def budgets(self, spec: PipelineSpec) -> PipelineBudgets | None:
        """The pipeline's budgets (None without `budgets:`); stores shared per process, or
        through Redis by every replica."""
        if not spec.budgets:
            return None
        from engine.resources.budgets import PipelineBudgets

        return PipelineBudgets(spec, self._budget_store, self.models.cost, self.spawn,
                               levels=self.budget_levels)

    def _budget_store(self, where: str) -> BudgetStore:
        where = self._shared(where)
        if where not in self._budget_stores:
            from engine.resources.budgets import MemoryBudgetStore, RedisBudgetStore

            self._budget_stores[where] = (MemoryBudgetStore() if where == "memory"
                                          else RedisBudgetStore(where))
        return self._budget_stores[where]

    def rate_limiter(self, redis_url: str | None) -> RateLimiter:
        """This process's buckets, or the buckets shared by every process using `redis_url`."""
        if redis_url not in self._limiters:
            if redis_url is None:
                self._limiters[None] = MemoryRateLimiter(clock=self.clock)
            else:
                self._limiters[redis_url] = RedisRateLimiter(redis_url)
        return self._limiters[redis_url]

    def provider_limits(self) -> ProviderLimits:
        """The models' concurrency and rate limits (`models.<tier>.limits`): this process's,
        or every process's through `redis_url`."""
        if self._provider_limits is None:
            from engine.resources.provider_limits import MemorySlots, ProviderLimits, RedisSlots

            slots = RedisSlots(self.redis_url) if self.redis_url else MemorySlots()
            self._provider_limits = ProviderLimits(
                slots, self.rate_limiter(self.redis_url), clock=self.clock, sleep=self.sleep)
        return self._provider_limits

    def _shared(self, where: str) -> str:
        """A store the pipeline left on `memory` moves to `redis_url` when there is one."""
        return self.redis_url if where == "memory" and self.redis_url else where

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


def _idempotency(redis_url: str | None, clock: Callable[[], float]) -> IdempotencyStore:
    if redis_url is None:
        return MemoryIdempotency(IDEMPOTENCY_TTL, clock=clock)
    from engine.providers.idempotency_redis import RedisIdempotency

    return RedisIdempotency(redis_url, IDEMPOTENCY_TTL)


def _breaker_store(redis_url: str | None) -> BreakerStore:
    if redis_url is None:
        return MemoryBreakerStore()
    from engine.providers.breaker_redis import RedisBreakerStore

    return RedisBreakerStore(redis_url)
