"""Cache stores: the memory store on a fake clock (TTL, LRU bound, partitions, clear, stats),
the same contract on a real redis-server, and what only Redis must do: replicas (two
RedisCache objects, and a second OS process) seeing each other's entries and clears, a
replica catching up after the stream was trimmed, and Redis down or restarted costing
misses, never failed requests."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from redis.asyncio import Redis
from redis_server import RedisServer, start_redis

from engine.cache.store import (
    CacheEntry,
    CacheEvent,
    CacheStore,
    CacheStoreError,
    MemoryCache,
    open_store,
)
from engine.cache.store_redis import RedisCache

Vector = npt.NDArray[np.float32]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def unit(seed: int) -> Vector:
    """A reproducible random unit vector (the same in every process)."""
    vector = np.random.default_rng(seed).standard_normal(384)
    return np.asarray(vector / np.linalg.norm(vector), dtype=np.float32)


def near(vector: Vector, noise: float = 0.1, seed: int = 99) -> Vector:
    """A paraphrase-like neighbour: cosine ≈ 0.995 to `vector`."""
    moved = vector + noise * unit(seed) / np.sqrt(2)
    return np.asarray(moved / np.linalg.norm(moved), dtype=np.float32)


def entry(key: str, *, partition: str = "p1", pipeline: str = "support",
          scope: Sequence[str] = ("acme", "billing"), answer: Any = None,
          created: float | None = None, ttl: float = 3600.0,
          vector: Vector | None = None) -> CacheEntry:
    return CacheEntry(key=key, partition=partition, pipeline=pipeline, scope=scope,
                      query=f"question {key}", answer={"text": f"answer {key}"}
                      if answer is None else answer,
                      created=time.time() if created is None else created, ttl=ttl,
                      vector=vector)


def keys(results: list[tuple[CacheEntry, float]]) -> list[str]:
    return [found.key for found, _ in results]


# ---------------------------------------------------------------- both stores


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[CacheStore]:
    if request.param == "memory":
        yield MemoryCache(100)
        return
    cache = RedisCache(request.getfixturevalue("redis_url"))
    yield cache
    await cache.aclose()


async def test_exact_put_then_get(store: CacheStore) -> None:
    assert await store.get("k1") is None
    await store.put(entry("k1", answer={"text": "Reset it under Settings.", "n": [1, 2]}))
    found = await store.get("k1")
    assert found is not None
    assert (found.key, found.partition, found.pipeline, found.scope, found.query) == (
        "k1", "p1", "support", ("acme", "billing"), "question k1")
    assert found.answer == {"text": "Reset it under Settings.", "n": [1, 2]}
    assert found.ttl == 3600.0 and time.time() - found.created < 5
    assert found.vector is None
    assert await store.get("k2") is None
    await store.put(entry("k1", answer="replaced"))
    replaced = await store.get("k1")
    assert replaced is not None and replaced.answer == "replaced"


async def test_nearest_finds_the_neighbour_best_first(store: CacheStore) -> None:
    await store.put(entry("a", vector=unit(1)))
    await store.put(entry("b", vector=unit(2)))
    await store.put(entry("exact-only"))
    results = await store.nearest("p1", near(unit(1)), k=5)
    assert keys(results) == ["a", "b"]  # the exact-only entry is never a candidate
    assert results[0][1] == pytest.approx(0.995, abs=0.01)
    assert abs(results[1][1]) < 0.3
    assert keys(await store.nearest("p1", unit(2), k=1)) == ["b"]


async def test_nearest_searches_only_its_partition(store: CacheStore) -> None:
    """Tenant B's entry is identical to the query, tenant A's store has nothing close: A
    must still never see B's answer."""
    await store.put(entry("tenant-b", partition="pB", scope=["b"], vector=unit(1)))
    await store.put(entry("tenant-a", partition="pA", scope=["a"], vector=unit(7)))
    assert keys(await store.nearest("pA", unit(1))) == ["tenant-a"]
    assert keys(await store.nearest("pB", unit(1))) == ["tenant-b"]
    assert await store.nearest("nobody", unit(1)) == []


async def test_clear_by_pipeline_and_by_scope_prefix(store: CacheStore) -> None:
    await store.put(entry("s-acme-billing", scope=["acme", "billing"], vector=unit(1)))
    await store.put(entry("s-acme-tech", partition="p2", scope=["acme", "tech"],
                          vector=unit(2)))
    await store.put(entry("s-globex", partition="p3", scope=["globex", "billing"]))
    await store.put(entry("s-acmelabs", partition="p4", scope=["acmelabs"]))
    await store.put(entry("other", partition="p5", pipeline="sales", scope=["acme"],
                          vector=unit(3)))

    assert await store.clear("support", ["acme"]) == 2  # a prefix of the scope, whole values
    assert await store.get("s-acme-billing") is None
    assert await store.get("s-acme-tech") is None
    assert await store.nearest("p1", unit(1)) == []
    assert await store.get("s-acmelabs") is not None  # "acme" is not a prefix of "acmelabs"
    assert await store.get("other") is not None  # another pipeline

    assert await store.clear("support", ["globex", "billing", "extra"]) == 0
    assert await store.clear(scope=["acme"]) == 1  # any pipeline
    assert keys(await store.nearest("p5", unit(3))) == []
    assert await store.clear("support") == 2
    assert await store.clear() == 0
    assert (await store.stats())["entries"] == 0


async def test_stats_count_what_the_stage_records(store: CacheStore) -> None:
    await store.put(entry("k", vector=unit(1)))
    await store.put(entry("x"))
    kinds: list[CacheEvent] = ["exact_hit", "semantic_hit", "semantic_hit", "miss",
                               "guard_rejection", "miss"]
    for kind in kinds:
        store.record(kind, "k")
    stats = await store.stats()
    assert stats == {"entries": 2, "indexed": 1, "hits": 3, "misses": 2, "exact_hits": 1,
                     "semantic_hits": 2, "guard_rejections": 1, "evictions": 0,
                     "expirations": 0, "errors": 0}
    with pytest.raises(ValueError, match="unknown cache event"):
        store.record("hit")  # type: ignore[arg-type]


async def test_bad_vectors_and_dead_entries_are_refused(store: CacheStore) -> None:
    with pytest.raises(ValueError, match="384 floats"):
        await store.put(entry("short", vector=np.ones(10, dtype=np.float32)))
    with pytest.raises(ValueError, match="384 floats"):
        await store.nearest("p1", np.ones(10, dtype=np.float32))
    await store.put(entry("no-ttl", ttl=0))
    await store.put(entry("born-dead", created=time.time() - 7200))
    assert await store.get("no-ttl") is None
    assert await store.get("born-dead") is None


# ---------------------------------------------------------------- memory, fake clock


async def test_memory_ttl_expiry_is_exact_and_frees_the_index() -> None:
    clock = FakeClock()
    cache = MemoryCache(10, clock=clock)
    await cache.put(entry("short", created=clock.now, ttl=60, vector=unit(1)))
    await cache.put(entry("long", created=clock.now, ttl=600, vector=near(unit(1))))
    clock.now += 59.9
    assert await cache.get("short") is not None
    assert keys(await cache.nearest("p1", unit(1))) == ["short", "long"]
    clock.now += 0.1  # expires == now: no longer served
    assert await cache.get("short") is None
    assert keys(await cache.nearest("p1", unit(1))) == ["long"]
    stats = await cache.stats()
    assert (stats["entries"], stats["indexed"], stats["expirations"]) == (1, 1, 1)
    clock.now += 1000
    assert await cache.nearest("p1", unit(1)) == []
    assert (await cache.stats())["indexed"] == 0
    assert len(cache) == 0


async def test_memory_re_put_resets_the_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(10, clock=clock)
    await cache.put(entry("k", created=clock.now, ttl=60))
    clock.now += 50
    await cache.put(entry("k", created=clock.now, ttl=60))
    clock.now += 50  # the first copy's expiry has passed; the second's has not
    assert await cache.get("k") is not None
    clock.now += 10
    assert await cache.get("k") is None


async def test_memory_lru_eviction_at_the_bound() -> None:
    clock = FakeClock()
    cache = MemoryCache(3, clock=clock)
    for i, name in enumerate(["a", "b", "c"]):
        await cache.put(entry(name, partition=f"p{i % 2}", created=clock.now,
                              vector=unit(i)))
    assert await cache.get("a") is not None  # a is now the most recently used
    await cache.put(entry("d", created=clock.now))
    assert len(cache) == 3
    assert await cache.get("b") is None  # the least recently used went, across partitions
    assert all([await cache.get(name) is not None for name in ("a", "c", "d")])
    assert keys(await cache.nearest("p1", unit(1))) == []  # b left its index too
    stats = await cache.stats()
    assert (stats["evictions"], stats["indexed"]) == (1, 2)

    # a semantic hit recorded by the stage refreshes the entry; being a candidate does not
    assert keys(await cache.nearest("p0", unit(0))) == ["a", "c"]
    cache.record("semantic_hit", "c")  # order now: a, d, c -> then a is used by get
    await cache.get("d")
    await cache.put(entry("e", created=clock.now))
    assert await cache.get("a") is None
    assert await cache.get("c") is not None
    assert (await cache.stats())["evictions"] == 2


async def test_memory_bound_holds_under_many_puts() -> None:
    cache = MemoryCache(50)
    for i in range(300):
        await cache.put(entry(f"k{i}", partition=f"p{i % 7}", vector=unit(i)))
    stats = await cache.stats()
    assert (stats["entries"], stats["indexed"], stats["evictions"]) == (50, 50, 250)
    assert await cache.get("k249") is None
    assert await cache.get("k250") is not None
    assert keys(await cache.nearest("p5", unit(299), k=1)) == ["k299"]  # 299 % 7 == 5
    evicted = await cache.nearest("p5", unit(5), k=7)  # k5 was in p5; it left the index
    assert "k5" not in keys(evicted) and len(evicted) == 7


def test_open_store_picks_the_backend() -> None:
    import engine.cache.store as store_module

    assert store_module.RedisCache is RedisCache  # re-exported, imported lazily
    assert isinstance(open_store("memory", max_entries=5), MemoryCache)
    with pytest.raises(ValueError, match="memory' or a redis"):
        open_store("memcached://x")


async def test_open_store_builds_a_redis_cache(redis_url: str) -> None:
    cache = open_store(redis_url)
    assert isinstance(cache, RedisCache)
    await cache.aclose()


# ---------------------------------------------------------------- redis: replicas


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[tuple[RedisCache, RedisCache]]:
    first, second = RedisCache(redis_url), RedisCache(redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_a_replica_sees_the_entries_another_stored(
    replicas: tuple[RedisCache, RedisCache],
) -> None:
    a, b = replicas
    assert await a.nearest("p1", unit(1)) == []  # both have synced (empty rebuilds) first
    assert await b.nearest("p1", unit(1)) == []
    await a.put(entry("exact", answer="from a"))
    await a.put(entry("sem", vector=unit(1), answer="semantic from a"))
    found = await b.get("exact")
    assert found is not None and found.answer == "from a"
    results = await b.nearest("p1", near(unit(1)))
    assert keys(results) == ["sem"] and results[0][1] > 0.99
    assert results[0][0].answer == "semantic from a"
    assert b.rebuilds == 1  # it came through the stream, not a rescan
    assert (await b.stats())["indexed"] == 1

    await b.put(entry("sem", vector=unit(5), answer="replaced by b"))  # same key, new vector
    [(_, old_score)] = await a.nearest("p1", unit(1))
    assert old_score < 0.3  # the old vector is gone from a's index
    assert a.rebuilds == 1  # the replacement came through the stream too
    replaced = await a.nearest("p1", unit(5))
    assert keys(replaced) == ["sem"] and replaced[0][1] > 0.99
    assert replaced[0][0].answer == "replaced by b"


async def test_a_new_replica_rebuilds_from_redis(redis_url: str) -> None:
    a = RedisCache(redis_url)
    for i in range(30):
        await a.put(entry(f"k{i}", partition=f"p{i % 3}", vector=unit(i)))
    late = RedisCache(redis_url)
    assert keys(await late.nearest("p2", unit(29), k=1)) == ["k29"]
    assert (await late.stats())["indexed"] == 30
    await a.aclose()
    await late.aclose()


async def test_clear_on_one_replica_reaches_the_other(
    replicas: tuple[RedisCache, RedisCache],
) -> None:
    a, b = replicas
    await a.put(entry("keep", partition="p9", pipeline="sales", vector=unit(9)))
    await a.put(entry("go", vector=unit(1)))
    assert keys(await b.nearest("p1", unit(1))) == ["go"]  # b holds it in its local index
    assert await a.clear("support") == 1
    assert await b.get("go") is None
    assert await b.nearest("p1", unit(1)) == []
    # the tombstone took it out of b's index (not merely filtered out when read back)
    stats = await b.stats()
    assert (stats["indexed"], stats["evictions"]) == (1, 0)
    assert keys(await b.nearest("p9", unit(9))) == ["keep"]
    await a.put(entry("go", vector=unit(1), answer="stored after the clear"))
    assert keys(await b.nearest("p1", unit(1))) == ["go"]  # a later put survives the clear


async def test_entries_vanishing_in_redis_are_never_served(
    replicas: tuple[RedisCache, RedisCache], redis_url: str,
) -> None:
    a, b = replicas
    await a.put(entry("short", vector=unit(1), ttl=0.3))
    await a.put(entry("evicted", vector=near(unit(1))))
    assert keys(await b.nearest("p1", unit(1))) == ["short", "evicted"]
    client = Redis.from_url(redis_url)
    await client.delete("engine:cache:e:evicted")  # as maxmemory-lru would
    await client.aclose()
    await asyncio.sleep(0.4)
    assert await b.get("short") is None
    assert await b.nearest("p1", unit(1)) == []
    stats = await b.stats()
    assert (stats["indexed"], stats["evictions"], stats["expirations"]) == (0, 1, 1)


async def test_a_replica_behind_the_trimmed_stream_rebuilds(
    replicas: tuple[RedisCache, RedisCache], redis_url: str,
) -> None:
    a, b = replicas
    await a.put(entry("first", vector=unit(0)))
    assert keys(await b.nearest("p1", unit(0))) == ["first"]
    for i in range(1, 40):
        await a.put(entry(f"k{i}", vector=unit(i)))
    await a.clear(scope=["nothing-matches"])
    client = Redis.from_url(redis_url)
    await client.xtrim("engine:cache:stream", maxlen=1, approximate=False)  # b missed 39 puts
    await client.aclose()
    assert keys(await b.nearest("p1", unit(17), k=1)) == ["k17"]
    assert b.rebuilds == 2
    assert (await b.stats())["indexed"] == 40


async def test_a_vanished_stream_makes_replicas_rebuild(
    replicas: tuple[RedisCache, RedisCache], redis_url: str,
) -> None:
    """As after a restart or a FLUSHALL: the position a replica holds means nothing now."""
    a, b = replicas
    assert await b.nearest("p1", unit(0)) == []
    await a.put(entry("k", vector=unit(0)))
    client = Redis.from_url(redis_url)
    await client.delete("engine:cache:stream")
    await client.aclose()
    assert keys(await b.nearest("p1", unit(0))) == ["k"]
    assert b.rebuilds == 2


async def test_concurrent_lookups_share_one_sync(
    replicas: tuple[RedisCache, RedisCache],
) -> None:
    a, b = replicas
    await a.put(entry("k", vector=unit(1)))
    results = await asyncio.gather(*(b.nearest("p1", near(unit(1), seed=s)) for s in range(32)))
    assert all(keys(found) == ["k"] for found in results)
    assert b._syncs_started <= 3


async def test_a_client_decoding_responses_is_refused(redis_url: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisCache(client)
    await client.aclose()


WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import numpy as np
    from engine.cache.store import CacheEntry
    from engine.cache.store_redis import RedisCache

    def unit(seed):
        vector = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
        return vector / np.linalg.norm(vector)

    async def main():
        cache = RedisCache(sys.argv[1])
        exact = await cache.get("from-parent")
        near = await cache.nearest("p1", unit(1))
        for key, vector in (("child-exact", None), ("child-sem", unit(2))):
            await cache.put(CacheEntry(key=key, partition="p1", pipeline="support",
                                       scope=["acme"], query=key, answer="child " + key,
                                       created=time.time(), ttl=60, vector=vector))
        print(json.dumps({"exact": exact and exact.answer,
                          "semantic": [(e.key, e.answer) for e, _ in near],
                          "errors": (await cache.stats())["errors"]}))
        await cache.aclose()

    asyncio.run(main())
    """
)


async def test_two_processes_share_the_cache(redis_url: str) -> None:
    parent = RedisCache(redis_url)
    try:
        await parent.put(entry("from-parent", answer="parent exact"))
        await parent.put(entry("parent-sem", vector=unit(1), answer="parent semantic"))
        child = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", WORKER, redis_url],
            capture_output=True, text=True, timeout=60,
        )
        assert child.returncode == 0, child.stderr
        seen = json.loads(child.stdout)
        assert seen == {"exact": "parent exact",
                        "semantic": [["parent-sem", "parent semantic"]], "errors": 0}
        exact = await parent.get("child-exact")
        assert exact is not None and exact.answer == "child child-exact"
        assert keys(await parent.nearest("p1", near(unit(2)), k=1)) == ["child-sem"]
    finally:
        await parent.aclose()


# ---------------------------------------------------------------- redis: failures


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nobody listens on: bound, so nothing else takes it, but never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def assert_misses_fast(cache: RedisCache) -> None:
    started = time.monotonic()
    assert await cache.get("k") is None
    assert await cache.nearest("p1", unit(1)) == []
    await cache.put(entry("k", vector=unit(1)))  # dropped, not raised
    assert time.monotonic() - started < 1.0


async def test_redis_down_is_a_miss_not_an_error(
    closed_port: int, caplog: pytest.LogCaptureFixture,
) -> None:
    cache = RedisCache(f"redis://127.0.0.1:{closed_port}/0", cooldown=0.0)
    await assert_misses_fast(cache)
    assert cache._counters.values["errors"] == 3
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cache store unavailable" in warnings[0].getMessage()
    with pytest.raises(CacheStoreError, match="cache store unavailable"):
        await cache.clear("support")  # an admin call must not report "0 cleared"
    with pytest.raises(CacheStoreError):
        await cache.stats()
    await cache.aclose()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A hung Redis: connections are accepted by the kernel (listen backlog) and then nothing
    is ever answered, so every command would wait for its timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


async def test_a_hung_redis_costs_one_timeout_then_nothing(silent_port: int) -> None:
    cache = RedisCache(f"redis://127.0.0.1:{silent_port}/0", timeout=0.2, cooldown=60)
    started = time.monotonic()
    assert await cache.get("k") is None  # waits for the timeout (and the one retry) once
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    for _ in range(100):  # then, while cooling down, Redis is not even tried
        assert await cache.get("k") is None
        assert await cache.nearest("p1", unit(1)) == []
        await cache.put(entry("k"))
    assert time.monotonic() - started < 5  # waiting 0.2 s per call would take 120 s
    assert cache._counters.values["errors"] == 301
    await cache.aclose()


def restart(server: RedisServer) -> RedisServer:
    """The same server (same port) back up, empty, as after a crash without persistence."""
    process = subprocess.Popen(
        server.process.args,  # the same command line: same port, no persistence
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    again = RedisServer(process, server.port)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return again
        except OSError:
            time.sleep(0.02)
    again.stop()
    raise RuntimeError("redis-server did not come back")


async def test_requests_survive_a_redis_restart() -> None:
    server = start_redis()
    servers = [server]
    a = RedisCache(server.url, cooldown=0.1)
    b = RedisCache(server.url, cooldown=0.1)
    try:
        await a.put(entry("before", vector=unit(1)))
        assert keys(await b.nearest("p1", unit(1))) == ["before"]

        server.stop()
        await assert_misses_fast(b)
        await assert_misses_fast(a)

        servers.append(restart(server))
        await asyncio.sleep(0.15)  # past the cooldown: Redis is tried again
        assert await b.nearest("p1", unit(1)) == []  # the restart lost it; b knows
        await a.put(entry("after", vector=unit(2), answer="after the restart"))
        found = await b.get("after")
        assert found is not None and found.answer == "after the restart"
        assert keys(await b.nearest("p1", unit(2))) == ["after"]
        assert (await b.stats())["indexed"] == 1
        assert b.rebuilds == 2  # what happened while it was down is unknown: it rescanned
    finally:
        await a.aclose()
        await b.aclose()
        for running in servers:
            running.stop()
