"""State shared by processes through a real Redis: breakers, idempotency keys, provider
limits. Each "process" is its own store or `Resources` with its own connection, as two
replicas would be; nothing is shared but the Redis server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from engine.providers.breaker import CircuitBreaker
from engine.providers.breaker_redis import RedisBreakerStore
from engine.providers.idempotency_redis import RedisIdempotency
from engine.resources import Resources
from engine.resources.limits import MemoryRateLimiter, RedisRateLimiter
from engine.resources.provider_limits import MemorySlots, ProviderLimits, RedisSlots
from engine.spec.models import Breaker, TierLimits

SPEC = Breaker(window=4, min_calls=4, failure_rate=0.5, cooldown=30, half_open_calls=1)
DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[list[RedisBreakerStore]]:
    made = [RedisBreakerStore(redis_url) for _ in range(2)]
    yield made
    for store in made:
        await store.aclose()


async def fail(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        permit = await breaker.acquire(5.0)
        assert permit is not None
        await breaker.record(permit, False)


async def test_a_breaker_opened_by_one_process_is_open_in_the_other(
        stores: list[RedisBreakerStore]) -> None:
    one, two = (CircuitBreaker("gpt", SPEC, store=store, clock=time.time) for store in stores)
    await fail(one, 2)
    await fail(two, 2)  # four failures in all, two seen by each: the shared window opens it
    assert two.state == "open"
    assert await one.acquire(5.0) is None
    assert one.state == "open"


async def test_concurrent_outcomes_from_two_processes_are_all_counted(
        stores: list[RedisBreakerStore]) -> None:
    spec = Breaker(window=40, min_calls=40, failure_rate=1.0, cooldown=30)
    one, two = (CircuitBreaker("m", spec, store=store, clock=time.time) for store in stores)
    await asyncio.gather(*(fail(breaker, 1) for breaker in [one, two] * 19))
    assert len((await one.snapshot()).outcomes) == 38  # no load-modify-save lost another's
    await asyncio.gather(fail(one, 1), fail(two, 1))
    assert (await two.snapshot()).state == "open"


async def test_a_breaker_goes_on_locally_when_redis_is_down() -> None:
    store = RedisBreakerStore(DEAD_REDIS, timeout=0.2)
    breaker = CircuitBreaker("m", SPEC, store=store, clock=time.time)
    await fail(breaker, 4)
    assert breaker.state == "open" and await breaker.acquire(5.0) is None
    await store.aclose()


# ------------------------------------------------------------------ idempotency


async def test_two_processes_racing_on_one_key_make_one_call(redis_url: str) -> None:
    one, two = RedisIdempotency(redis_url, 60), RedisIdempotency(redis_url, 60)
    calls = 0

    async def answer() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return {"answer": 42}

    results = await asyncio.gather(*(store.run("k", answer) for store in [one, two] * 3))
    assert results == [{"answer": 42}] * 6 and calls == 1
    late = RedisIdempotency(redis_url, 60)  # a third process, after the fact: a replay
    assert await late.run("k", answer) == {"answer": 42} and calls == 1
    for store in (one, two, late):
        await store.aclose()


async def test_a_failed_call_is_not_remembered_across_processes(redis_url: str) -> None:
    one, two = RedisIdempotency(redis_url, 60), RedisIdempotency(redis_url, 60)

    async def broken() -> int:
        await asyncio.sleep(0.05)
        raise RuntimeError("provider down")

    async def working() -> int:
        return 7

    first = asyncio.ensure_future(one.run("k", broken))
    await asyncio.sleep(0.01)
    second = await two.run("k", working)  # waited for the first, which failed: calls itself
    with pytest.raises(RuntimeError):
        await first
    assert second == 7 and await one.run("k", broken) == 7
    await one.aclose()
    await two.aclose()


async def test_idempotency_calls_through_when_redis_is_down() -> None:
    store = RedisIdempotency(DEAD_REDIS, 60, timeout=0.2)

    async def answer() -> str:
        return "fresh"

    assert await store.run("k", answer) == "fresh"
    await store.aclose()


# ------------------------------------------------------------------ provider limits


class InFlight:
    """Counts calls in flight across every limiter that runs them."""

    def __init__(self) -> None:
        self.now = self.most = 0

    async def call(self, limits: ProviderLimits, spec: TierLimits, seconds: float) -> str:
        lease = await limits.enter("gpt", spec, wait=10.0, hold=5.0)
        if isinstance(lease, str):
            return lease
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(seconds)
        self.now -= 1
        await lease.release()
        return "ok"


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[Callable[[], ProviderLimits]]:
    """Makes one process's limits; closes their connections at the end."""
    made: list[ProviderLimits] = []

    def make() -> ProviderLimits:
        made.append(ProviderLimits(RedisSlots(redis_url), RedisRateLimiter(redis_url),
                                   clock=time.monotonic))
        return made[-1]

    yield make
    for limits in made:
        await limits.aclose()
        await limits.rates.aclose()


async def test_concurrency_holds_across_processes(
        shared: Callable[[], ProviderLimits]) -> None:
    one, two, seen = shared(), shared(), InFlight()
    spec = TierLimits(concurrency=3)
    outcomes = await asyncio.gather(*(seen.call(limits, spec, 0.05)
                                      for limits in [one, two] * 6))
    assert outcomes == ["ok"] * 12 and seen.most == 3


async def test_concurrency_in_one_process_without_redis() -> None:
    limits, seen = ProviderLimits(MemorySlots(), MemoryRateLimiter(),
                                  clock=time.monotonic), InFlight()
    outcomes = await asyncio.gather(*(seen.call(limits, TierLimits(concurrency=2), 0.02)
                                      for _ in range(7)))
    assert outcomes == ["ok"] * 7 and seen.most == 2


async def test_a_caller_that_waits_too_long_is_told_why(
        shared: Callable[[], ProviderLimits]) -> None:
    limits = shared()
    spec = TierLimits(concurrency=1, max_wait=0.05)
    held = await limits.enter("gpt", spec, wait=1.0, hold=5.0)
    assert not isinstance(held, str)
    assert await limits.enter("gpt", spec, wait=1.0, hold=5.0) == "1 calls already in flight"
    await held.release()
    assert not isinstance(await limits.enter("gpt", spec, wait=1.0, hold=5.0), str)


async def test_a_dead_process_s_slot_frees_when_its_lease_expires(redis_url: str) -> None:
    dead = RedisSlots(redis_url)
    assert await dead.take("gpt", 1, 0.0, hold=-4.9) is not None  # lease: 0.1 s, never freed
    alive = RedisSlots(redis_url)
    assert await alive.take("gpt", 1, 0.0, hold=5.0) is None
    assert await alive.take("gpt", 1, 1.0, hold=5.0) is not None
    await dead.aclose()
    await alive.aclose()


async def test_a_short_lease_does_not_shorten_a_long_one(redis_url: str) -> None:
    """The slot set's expiry only grows: a quick call taking a slot must not let Redis drop
    the whole set, and with it a long call's slot, before that call's lease ends."""
    from redis.asyncio import Redis

    slots, client = RedisSlots(redis_url), Redis.from_url(redis_url)
    assert await slots.take("gpt", 2, 0.0, hold=30.0) is not None
    assert await slots.take("gpt", 2, 0.0, hold=0.5) is not None
    assert await client.ttl(slots.prefix + "gpt") >= 30
    await slots.aclose()
    await client.aclose()


async def test_the_rate_is_shared_and_waited_for(
        shared: Callable[[], ProviderLimits]) -> None:
    one, two = shared(), shared()
    spec = TierLimits(rate="4/sec", max_wait=2.0)
    started = time.monotonic()
    for limits in [one, two] * 3:  # six calls at 4/s: the burst of 4, then 2 waits of 0.25 s
        assert not isinstance(await limits.enter("gpt", spec, wait=5.0, hold=1.0), str)
    assert 0.4 < time.monotonic() - started < 1.5
    hurried = TierLimits(rate="4/sec", max_wait=0.01)
    assert await one.enter("gpt", hurried, wait=5.0, hold=1.0) == "over its rate of 4/sec"


async def test_limits_fail_open_when_redis_is_down() -> None:
    limits = ProviderLimits(RedisSlots(DEAD_REDIS, timeout=0.2),
                            RedisRateLimiter(DEAD_REDIS, timeout=0.2), clock=time.monotonic)
    lease = await limits.enter("gpt", TierLimits(concurrency=1, rate="1/min"), wait=1.0,
                               hold=1.0)
    assert not isinstance(lease, str)
    await limits.aclose()
    await limits.rates.aclose()


# ------------------------------------------------------------------ Resources


async def test_resources_with_redis_share_memory_caches_and_breakers(redis_url: str) -> None:
    from engine.spec.models import Resource

    one, two = Resources(redis_url=redis_url), Resources(redis_url=redis_url)
    cache = Resource(type="cache", backend="memory")
    assert type(one.cache("responses", cache)).__name__ == "RedisCache"
    opened = one.breaker("gpt", SPEC)
    await fail(opened, 4)
    assert await two.breaker("gpt", SPEC).acquire(5.0) is None
    alone = Resources()
    assert type(alone.cache("responses", cache)).__name__ == "MemoryCache"
    for res in (one, two, alone):
        await res.aclose()


async def test_a_failing_store_is_left_alone_for_its_cooldown_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    from engine.resources.redis import Outage

    now = [100.0]
    outage = Outage("breaker store", "each process keeps its own", cooldown=5.0,
                    clock=lambda: now[0])
    assert outage.available()
    with caplog.at_level("WARNING"):
        outage.failed(ConnectionError("refused"), "get")
        now[0] += 4.9
        assert not outage.available()  # callers take their local path without asking Redis
        outage.failed(ConnectionError("refused again"))
        now[0] += 5.0
        assert outage.available()
        outage.recovered()
        outage.recovered()
    said = [r.getMessage() for r in caplog.records]
    assert said == ["breaker store unavailable (get: ConnectionError: refused): each process "
                    "keeps its own; retrying every 5.0 s", "breaker store is back"]


async def test_a_hung_redis_costs_the_breaker_one_timeout_not_one_per_call() -> None:
    import socket

    with socket.socket() as hung:  # accepts connections, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        store = RedisBreakerStore(f"redis://127.0.0.1:{hung.getsockname()[1]}/0",
                                  timeout=0.3)
        breaker = CircuitBreaker("m", SPEC, store=store, clock=time.time)
        started = time.monotonic()
        await fail(breaker, 4)  # 4 calls: 8 loads and saves, each under the lock
        assert time.monotonic() - started < 2.0  # one timeout (and its retry), then local
        assert breaker.state == "open"
        await store.aclose()
