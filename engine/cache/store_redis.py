"""`RedisCache`: one cache shared by every process (replica) using the same Redis.

Layout (under `prefix`, default `engine:cache:`):

- `e:<key>` — one hash per entry: `m` (the entry's JSON) and, for semantic entries, `v` (the
  vector's 1 536 raw float32 bytes). Written with `PEXPIRE` set to the entry's remaining
  life, so Redis itself expires it, and LRU-evicted by the server under `maxmemory` (every
  key has a TTL, so `volatile-lru` or `allkeys-lru` both work): the server, not each replica,
  bounds the size. An exact lookup is one `HMGET`.
- `stream` — the change log replicas follow: `put <key>` for every semantic entry stored,
  `clear <selector>` (a tombstone) for every invalidation, and a `start` mark per rebuild.

Semantic search: each replica keeps a LOCAL `SemanticIndex` per partition (FAISS in
process: sub-millisecond, no Redis module needed) and brings it up to date before each
`nearest` with one pipelined round trip — a non-blocking `XREAD` from the last id it has
applied, plus the stream's first and last ids. New `put`s are fetched from their hashes in
one more pipelined round trip (the hash is the truth: an entry cleared or expired meanwhile
is simply not indexed). Concurrent lookups share one sync (single flight), so 64 concurrent
lookups do not cost 64 XREADs. The candidates found locally are then read back from Redis
(one `HMGET` each, pipelined), which makes Redis authoritative: an entry another replica
cleared, or that Redis expired or evicted, is never returned even if this replica has not yet
seen the tombstone, and is dropped from the local index on the spot.

Bounds and catch-up: every `XADD` trims with `MAXLEN ~ stream_maxlen` (approximate: O(1)
amortized, whole radix-tree nodes), so the log holds at least the last `stream_maxlen`
changes (≈ 100 bytes each). A replica that fell further behind finds the stream's first id
past the last one it applied (approximate trimming only drops an id once at least
`stream_maxlen` newer entries exist, so by then replaying would cost as much anyway); it
then REBUILDS: marks the stream (`start`), SCANs every entry hash into fresh indexes, swaps
them in, and resumes reading after the mark (changes during the scan are replayed;
applying a change twice is harmless). The same rebuild runs on first use, after any Redis
error (what happened during the outage is unknown), and when the stream vanished or went
back in time (a Redis restart, a FLUSHALL).

Failures: on the request path a Redis failure is a miss. `get`/`nearest` return a miss,
`put` drops the entry; each failure is logged and counted in `stats()["errors"]`, and then
Redis is not tried again for `cooldown` seconds, so while it is down or unreachable requests
pay nothing rather than a timeout each (one warning per outage, not one per request). The
client's own retry (one, no backoff) reconnects a pool whose connections a restart killed.
`clear` and `stats` are administrative and raise `CacheStoreError` instead: "0 entries
cleared" must never be reported when nothing could be cleared.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from redis.exceptions import RedisError

from engine.cache.store import (
    CacheEntry,
    CacheEvent,
    CacheStoreError,
    Counters,
    Partitions,
    checked_vector,
    scope_matches,
)
from engine.resources.embeddings import DIMENSIONS
from engine.resources.redis import Outage, connect

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisCache"]

log = logging.getLogger("engine.cache")

_ERRORS = (RedisError, OSError)
_BATCH = 500  # keys per pipelined round trip when scanning or fetching
StreamId = tuple[int, int]


def _sid(raw: bytes | str) -> StreamId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _text(raw: StreamId) -> str:
    return f"{raw[0]}-{raw[1]}"


@dataclass(slots=True)
class _Local:
    """What a replica knows of one indexed entry: enough to find it for a tombstone, prune it
    when it expires, and tell whether a `put` in the stream is newer than the copy held."""

    serial: int
    partition: str
    pipeline: str
    scope: tuple[str, ...]
    expires: float
    seen: StreamId  # the stream position this copy is as of


@dataclass
class _Replica:
    """The local side: indexes + what they hold. Built fresh by a rebuild and swapped in."""

    dim: int
    partitions: Partitions = field(init=False)
    entries: dict[str, _Local] = field(default_factory=dict)
    keys: dict[int, str] = field(default_factory=dict)
    expiry: list[tuple[float, int, str]] = field(default_factory=list)
    serials: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.partitions = Partitions(self.dim)

    def index(self, entry: CacheEntry, vector: npt.NDArray[np.float32], seen: StreamId) -> None:
        """Index `entry` unless the copy held is as new or newer (a put and a sync can
        interleave: the older write must not win)."""
        held = self.entries.get(entry.key)
        if held is not None:
            if held.seen >= seen:
                return
            self.forget([entry.key])
        local = _Local(next(self.serials), entry.partition, entry.pipeline,
                       tuple(entry.scope), entry.expires, seen)
        self.partitions.add(entry.partition, local.serial, vector)
        self.entries[entry.key] = local
        self.keys[local.serial] = entry.key
        heapq.heappush(self.expiry, (local.expires, local.serial, entry.key))
        if len(self.expiry) > 2 * len(self.entries) + 1024:  # drop items of replaced entries
            self.expiry = [(v.expires, v.serial, k) for k, v in self.entries.items()]
            heapq.heapify(self.expiry)

    def forget(self, keys: Sequence[str]) -> int:
        gone = [(local.partition, local.serial) for key in keys
                if (local := self.entries.pop(key, None)) is not None]
        for _, serial in gone:
            del self.keys[serial]
        self.partitions.remove_grouped(gone)
        return len(gone)

    def prune(self, now: float) -> int:
        """Drop expired entries (on the writer's clock; Redis's own expiry is what counts for
        serving — this only frees local memory)."""
        due = []
        while self.expiry and self.expiry[0][0] <= now:
            _, serial, key = heapq.heappop(self.expiry)
            local = self.entries.get(key)
            if local is not None and local.serial == serial:
                due.append(key)
        return self.forget(due)

    def clear(self, pipeline: str | None, scope: Sequence[str] | None,
              before: StreamId) -> None:
        """Apply a tombstone: only copies older than it (a later put survives a clear)."""
        self.forget([key for key, local in self.entries.items() if local.seen < before
                     and scope_matches(pipeline, scope, local.pipeline, local.scope)])


class RedisCache:
    """The shared store; see the module docstring for the layout, sync and failure policy.

    `client` is a URL (the cache then owns the pool, built to fail fast: `timeout` seconds to
    connect or answer, one retry, and `aclose` closes it) or a `redis.asyncio.Redis` the
    caller owns, which must return bytes (no `decode_responses`: vectors are binary).

    `sync_interval`: minimum seconds between two syncs with the stream (0: before every
    `nearest`, so an entry stored by any replica is found by the next lookup anywhere; raise
    it to trade freshness for one round trip less per lookup under heavy load)."""

    def __init__(self, client: str | Redis, *, prefix: str = "engine:cache:",
                 dim: int = DIMENSIONS, stream_maxlen: int = 100_000, timeout: float = 0.25,
                 cooldown: float = 1.0, sync_interval: float = 0.0,
                 read_batch: int = 1000) -> None:
        if not isinstance(client, str) and client.connection_pool.connection_kwargs.get(
                "decode_responses"):
            raise ValueError("RedisCache needs a client without decode_responses")
        self._client, self._owned = connect(client, timeout)
        self.prefix = prefix
        self.dim = dim
        self.stream_maxlen = stream_maxlen
        self.cooldown = cooldown
        self.sync_interval = sync_interval
        self.read_batch = read_batch
        self.rebuilds = 0
        self._stream = prefix + "stream"
        self._pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "e:*"
        self._replica = _Replica(dim)
        self._last: StreamId = (0, 0)
        self._stale = True  # nothing read yet: the first sync is a rebuild
        self.outage = Outage("cache store", "serving misses", cooldown=cooldown)
        self._sync_lock = asyncio.Lock()
        self._syncs_started = self._syncs_done = 0
        self._synced_at = -math.inf
        self._counters = Counters()

    # -- the request path ---------------------------------------------------------------------
    async def get(self, key: str) -> CacheEntry | None:
        if not self._available():
            return None
        try:
            [(meta, vector)] = await self._fetch([key])
        except _ERRORS as exc:
            self._failed("get", exc)
            return None
        self._recovered()
        return None if meta is None else self._decode(meta, vector)

    async def nearest(self, partition: str, vector: npt.NDArray[np.float32],
                      k: int = 5) -> list[tuple[CacheEntry, float]]:
        query = checked_vector(vector, self.dim)
        assert query is not None
        if not self._available():
            return []
        try:
            await self._sync()
            found = self._replica.partitions.search(partition, query, k)
            keys = [self._replica.keys[id_] for id_, _ in found]
            rows = await self._fetch(keys) if keys else []
        except _ERRORS as exc:
            self._failed("nearest", exc)
            return []
        self._recovered()
        results, vanished = [], []
        for (_, score), key, (meta, raw) in zip(found, keys, rows, strict=True):
            entry = None if meta is None else self._decode(meta, raw)
            if entry is None or entry.vector is None:
                vanished.append(key)  # expired, evicted or cleared in Redis: not served
            elif entry.partition == partition:
                results.append((entry, score))
        if vanished:  # Redis expired them (on its clock) or evicted them (maxmemory)
            now, held = time.time(), self._replica.entries
            expired = sum(1 for key in vanished if key in held and held[key].expires <= now)
            gone = self._replica.forget(vanished)
            self._counters.add("expirations", expired)
            self._counters.add("evictions", gone - expired)
        return results

    async def put(self, entry: CacheEntry) -> None:
        """Store `entry` for every replica; a Redis failure is logged and the entry dropped."""
        vector = checked_vector(entry.vector, self.dim)
        remaining = entry.expires - time.time()
        if entry.ttl <= 0 or remaining <= 0:
            return
        try:
            mapping: dict[str, str | bytes] = {"m": json.dumps(entry.to_json(),
                                                               ensure_ascii=False)}
        except (TypeError, ValueError) as exc:  # an answer that is not JSON: a stage bug
            self._counters.add("errors")
            log.warning("cache entry not stored: answer is not JSON (%s)", exc)
            return
        if vector is not None:
            mapping["v"] = vector.tobytes()
        if not self._available():
            return
        key = self._key(entry.key)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)  # a replaced semantic entry must not keep its old `v`
                pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
                pipe.pexpire(key, max(1, math.ceil(remaining * 1000)))
                if vector is not None:
                    self._log_change(pipe, {"op": "put", "k": entry.key})
                replies = await pipe.execute()
        except _ERRORS as exc:
            self._failed("put", exc)
            return
        self._recovered()
        if vector is not None:  # index our own entry now; the sync will skip its message
            self._replica.index(entry, vector, _sid(replies[-1]))

    def record(self, kind: CacheEvent, key: str | None = None) -> None:
        """Count what the stage decided (per process). Redis tracks recency itself."""
        self._counters.record(kind)

    # -- administration -----------------------------------------------------------------------
    async def clear(self, pipeline: str | None = None,
                    scope: Sequence[str] | None = None) -> int:
        """Delete matching entries in Redis, then post a tombstone so every replica drops them
        from its local index. Raises `CacheStoreError` when Redis fails."""
        removed = 0
        selector = {"pipeline": pipeline, "scope": None if scope is None else list(scope)}
        try:
            async for keys in self._scan():
                async with self._client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hget(key, "m")
                    metas = await pipe.execute()
                doomed = [key for key, meta in zip(keys, metas, strict=True) if meta is not None
                          and self._selected(meta, pipeline, scope)]
                if doomed:
                    removed += int(await self._client.unlink(*doomed))
            async with self._client.pipeline(transaction=False) as pipe:
                self._log_change(pipe, {"op": "clear", "sel": json.dumps(selector)})
                (tombstone,) = await pipe.execute()
        except _ERRORS as exc:
            self._failed("clear", exc)
            raise CacheStoreError(f"cache store unavailable: {type(exc).__name__}: {exc}") \
                from exc
        self._replica.clear(pipeline, scope, _sid(tombstone))
        return removed

    async def stats(self) -> dict[str, int]:
        """`entries` counts the entry keys in Redis (a SCAN: an admin call, O(entries));
        `indexed` the semantic entries in this replica's index; the rest is per process:
        `evictions` counts indexed entries this replica found gone from Redis before their
        expiry (server `maxmemory` eviction, a delete by hand), `expirations` those it
        dropped because they expired."""
        try:
            entries = sum([len(keys) async for keys in self._scan()])
        except _ERRORS as exc:
            self._failed("stats", exc)
            raise CacheStoreError(f"cache store unavailable: {type(exc).__name__}: {exc}") \
                from exc
        return {"entries": entries, "indexed": len(self._replica.entries),
                **self._counters.values}

    async def aclose(self) -> None:
        """Close the connection pool if this cache made it (it was given a URL)."""
        if self._owned:
            await self._client.aclose()

    # -- replica sync -------------------------------------------------------------------------
    async def _sync(self) -> None:
        """Single flight: a caller that arrives while a sync runs waits for the next one to
        finish, unless one that started after it arrived already has."""
        if time.monotonic() - self._synced_at < self.sync_interval:
            return
        ticket = self._syncs_started
        async with self._sync_lock:
            if self._syncs_done > ticket:
                return
            self._syncs_started += 1
            number = self._syncs_started
            await self._sync_once()
            self._syncs_done = number
            self._synced_at = time.monotonic()

    async def _sync_once(self) -> None:
        rebuilt = self._stale
        if rebuilt:
            await self._rebuild()
        self._counters.add("expirations", self._replica.prune(time.time()))
        while True:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xread({self._stream: _text(self._last)}, count=self.read_batch)
                pipe.xrange(self._stream, count=1)
                pipe.xrevrange(self._stream, count=1)
                read, first, last = await pipe.execute()
            if not first or _sid(first[0][0]) > self._last or _sid(last[0][0]) < self._last:
                # gone (restart, flush), trimmed past us, or went back in time: start over,
                # then read what came after the mark (once: a stream trimmed faster than a
                # rebuild runs is left to the next lookup rather than looping here)
                if rebuilt:
                    return
                rebuilt = True
                await self._rebuild()
                continue
            messages = read[0][1] if read else []
            if messages:
                await self._apply(messages)
            if len(messages) < self.read_batch:
                return

    async def _apply(self, messages: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Apply tombstones in stream order, then fetch the entries named by newer puts; the
        position advances only once all of it succeeded (else the batch is read again)."""
        pending: dict[str, StreamId] = {}
        for raw_id, fields in messages:
            sid, op = _sid(raw_id), fields.get(b"op")
            if op == b"put":
                key = fields[b"k"].decode()
                held = self._replica.entries.get(key)
                if held is None or held.seen < sid:  # else our own put, already indexed
                    pending[key] = sid
            elif op == b"clear":
                selector = json.loads(fields[b"sel"])
                self._replica.clear(selector["pipeline"], selector["scope"], sid)
        keys = list(pending)
        for start in range(0, len(keys), _BATCH):
            chunk = keys[start:start + _BATCH]
            rows = await self._fetch(chunk)
            for key, (meta, raw) in zip(chunk, rows, strict=True):
                entry = None if meta is None else self._decode(meta, raw)
                if entry is not None and entry.vector is not None:
                    self._replica.index(entry, entry.vector, pending[key])
        self._last = _sid(messages[-1][0])

    async def _rebuild(self) -> None:
        """Index every entry in Redis afresh, then follow the stream from a mark set first."""
        async with self._client.pipeline(transaction=False) as pipe:
            self._log_change(pipe, {"op": "start"})
            (mark,) = await pipe.execute()
        seen = _sid(mark)
        fresh = _Replica(self.dim)
        async for keys in self._scan():
            for meta, raw in await self._fetch(keys, raw_keys=True):
                entry = None if meta is None else self._decode(meta, raw)
                if entry is not None and entry.vector is not None:
                    fresh.index(entry, entry.vector, seen)
        self._replica, self._last, self._stale = fresh, seen, False
        self.rebuilds += 1

    # -- helpers ------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    def _log_change(self, pipe: Any, fields: dict[str, str]) -> None:
        pipe.xadd(self._stream, fields, maxlen=self.stream_maxlen, approximate=True)

    async def _scan(self) -> AsyncIterator[list[bytes]]:
        """Entry keys, `_BATCH` at a time (raw bytes, full names)."""
        batch: list[bytes] = []
        async for key in self._client.scan_iter(match=self._pattern, count=1000):
            batch.append(key)
            if len(batch) >= _BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    async def _fetch(self, keys: Sequence[str | bytes],
                     raw_keys: bool = False) -> list[tuple[bytes | None, bytes | None]]:
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key if raw_keys else self._key(str(key)), ["m", "v"])
            return [(row[0], row[1]) for row in await pipe.execute()]

    def _decode(self, meta: bytes, raw: bytes | None) -> CacheEntry | None:
        """The entry, or None (counted, logged) for data this version cannot read."""
        try:
            vector = None if raw is None else np.frombuffer(raw, dtype=np.float32).copy()
            entry = CacheEntry.from_json(json.loads(meta), checked_vector(vector, self.dim))
        except (ValueError, KeyError, TypeError) as exc:
            self._counters.add("errors")
            log.warning("unreadable cache entry ignored: %s", exc)
            return None
        return entry

    @staticmethod
    def _selected(meta: bytes, pipeline: str | None, scope: Sequence[str] | None) -> bool:
        try:
            data = json.loads(meta)
            return scope_matches(pipeline, scope, data["pipeline"], data["scope"])
        except (ValueError, KeyError, TypeError):
            return pipeline is None and scope is None  # unreadable: only "clear all" takes it

    def _available(self) -> bool:
        """False (a miss, counted) while cooling down after a failure."""
        if not self.outage.available():
            self._counters.add("errors")
            return False
        return True

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._counters.add("errors")
        self._stale = True  # what changed while we could not read is unknown: rebuild
        self.outage.failed(exc, operation)

    def _recovered(self) -> None:
        self.outage.recovered()
