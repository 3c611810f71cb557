"""Where cached answers live: the `CacheEntry`, the `CacheStore` contract, and `MemoryCache`.

The cache stage computes the exact key and the partition (engine.cache.keys) and the
embedding; a store only files entries and finds them again:

- `get(key)` — the exact lookup; an expired entry is a miss.
- `nearest(partition, vector, k)` — the semantic candidates, best first, from ONE partition
  (pipeline + scope values + fingerprint), so a search can never reach another tenant's or
  another prompt's answers; expired entries are never returned. The store does not apply
  the similarity threshold or the near-miss guards: the stage does, and then says what it
  decided through `record(...)`, which is where hits and misses are counted (only the stage
  knows whether a candidate became a hit). Returned entries may come without their
  `vector`: the memory store keeps vectors only in its FAISS index.
- `put(entry)`, `clear(pipeline, scope)` (scope matches as a prefix of the entry's scope, so
  `--scope tenant-a` clears every label under that tenant), `stats()`, `aclose()`.

`MemoryCache` serves one process; `RedisCache` (engine.cache.store_redis, re-exported here
lazily so that importing this module never imports redis) is shared by several.
`open_store("memory" | "redis://...")` builds either from a resource's `backend`.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from engine.cache.index import SemanticIndex
from engine.errors import EngineError
from engine.resources.embeddings import DIMENSIONS

if TYPE_CHECKING:
    from engine.cache.store_redis import RedisCache

__all__ = [
    "CacheEntry",
    "CacheEvent",
    "CacheStore",
    "CacheStoreError",
    "MemoryCache",
    "RedisCache",
    "open_store",
    "scope_matches",
]


CacheEvent = Literal["exact_hit", "semantic_hit", "miss", "guard_rejection"]
"""What the stage decided for one lookup. `guard_rejection`: a semantic candidate above the
threshold that a near-miss guard (numbers, negation, entities...) refused; the lookup is then
also recorded as a `miss`."""

_COUNTERS = ("hits", "misses", "exact_hits", "semantic_hits", "guard_rejections",
             "evictions", "expirations", "errors")


class CacheStoreError(EngineError):
    """The shared store (Redis) failed during an administrative call (`clear`, `stats`).
    Lookups and stores never raise it: on the request path a store failure is a miss."""


@dataclass(frozen=True, slots=True, eq=False)
class CacheEntry:
    """One cached answer. Everything but `vector` is JSON (`to_json` / `from_json`).

    `key`: the exact-match hash; `partition`: the semantic search space; `pipeline` and
    `scope`: kept in clear text only so that `clear(pipeline, scope)` can find the entry
    (the hashes cannot be inverted); `query`: the normalised key text, which the near-miss
    guards compare with the new query; `created`: wall-clock seconds (`time.time()`), so that
    an age means the same in every process; `ttl`: seconds from `created`; `vector`: the
    L2-normalised float32 embedding, or None for an exact-only entry (never searched)."""

    key: str
    partition: str
    pipeline: str
    scope: Sequence[str]
    query: str
    answer: Any
    created: float
    ttl: float
    vector: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scope", tuple(self.scope))  # immutable, comparable

    @property
    def expires(self) -> float:
        """Wall-clock second at which the entry stops being served."""
        return self.created + self.ttl

    def to_json(self) -> dict[str, Any]:
        """The entry without its vector, as JSON-ready data."""
        return {"key": self.key, "partition": self.partition, "pipeline": self.pipeline,
                "scope": list(self.scope), "query": self.query, "answer": self.answer,
                "created": self.created, "ttl": self.ttl}

    @classmethod
    def from_json(cls, data: dict[str, Any],
                  vector: npt.NDArray[np.float32] | None = None) -> CacheEntry:
        return cls(key=str(data["key"]), partition=str(data["partition"]),
                   pipeline=str(data["pipeline"]), scope=[str(s) for s in data["scope"]],
                   query=str(data["query"]), answer=data["answer"],
                   created=float(data["created"]), ttl=float(data["ttl"]), vector=vector)


def scope_matches(pipeline: str | None, scope: Sequence[str] | None,
                  entry_pipeline: str, entry_scope: Sequence[str]) -> bool:
    """The `clear` selector: same pipeline (any when None) and `scope` a prefix of the
    entry's scope (any when None; `[]` is a prefix of everything)."""
    if pipeline is not None and entry_pipeline != pipeline:
        return False
    if scope is None:
        return True
    wanted = tuple(scope)
    return tuple(entry_scope[:len(wanted)]) == wanted


def checked_vector(vector: npt.NDArray[Any] | None, dim: int) -> npt.NDArray[np.float32] | None:
    """A contiguous float32 row of `dim`, or a ValueError: a wrong shape is a caller bug, and
    one that must not be discovered later inside FAISS or on another replica."""
    if vector is None:
        return None
    row = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    if row.shape[0] != dim:
        raise ValueError(f"expected a vector of {dim} floats, got shape {np.shape(vector)}")
    return row


class Counters:
    """The per-process counters behind `stats()`; `record` is what the stage calls."""

    def __init__(self) -> None:
        self.values = dict.fromkeys(_COUNTERS, 0)

    def record(self, kind: CacheEvent) -> None:
        if kind == "exact_hit":
            self.values["hits"] += 1
            self.values["exact_hits"] += 1
        elif kind == "semantic_hit":
            self.values["hits"] += 1
            self.values["semantic_hits"] += 1
        elif kind == "miss":
            self.values["misses"] += 1
        elif kind == "guard_rejection":
            self.values["guard_rejections"] += 1
        else:
            raise ValueError(f"unknown cache event {kind!r}")

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] += n


class Partitions:
    """One `SemanticIndex` per partition, created on first use and dropped when empty (there
    may be a partition per tenant, label and deployed pipeline version; empty ones must not
    pile up). Ids are chosen by the caller."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._indexes: dict[str, SemanticIndex] = {}

    def __len__(self) -> int:
        return sum(len(index) for index in self._indexes.values())

    def add(self, partition: str, id_: int, vector: npt.NDArray[np.float32]) -> None:
        index = self._indexes.get(partition)
        if index is None:
            index = self._indexes[partition] = SemanticIndex(self.dim)
        index.add([id_], vector.reshape(1, -1))

    def remove(self, partition: str, ids: Sequence[int]) -> None:
        index = self._indexes.get(partition)
        if index is not None:
            index.remove(ids)
            if not len(index):
                del self._indexes[partition]

    def remove_grouped(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Remove many (partition, id) at once: one FAISS removal per partition, not per id."""
        grouped: dict[str, list[int]] = {}
        for partition, id_ in pairs:
            grouped.setdefault(partition, []).append(id_)
        for partition, ids in grouped.items():
            self.remove(partition, ids)

    def search(self, partition: str, vector: npt.NDArray[np.float32],
               k: int) -> list[tuple[int, float]]:
        index = self._indexes.get(partition)
        return [] if index is None else index.search(vector, k)


class CacheStore(Protocol):
    """What the cache stage and `engine cache clear` use; see the module docstring."""

    async def get(self, key: str) -> CacheEntry | None: ...
    async def nearest(self, partition: str, vector: npt.NDArray[np.float32],
                      k: int = 5) -> list[tuple[CacheEntry, float]]: ...
    async def put(self, entry: CacheEntry) -> None: ...
    async def clear(self, pipeline: str | None = None,
                    scope: Sequence[str] | None = None) -> int: ...
    def record(self, kind: CacheEvent, key: str | None = None) -> None: ...
    async def stats(self) -> dict[str, int]: ...
    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Slot:
    entry: CacheEntry
    serial: int  # unique per stored entry (a re-put gets a new one); the index id if a vector


@dataclass(slots=True)
class _Expiry:
    """Min-heap of (expires, serial, key), deleted lazily: a popped item whose serial is no
    longer the key's current one belongs to an entry already replaced, evicted or cleared."""

    items: list[tuple[float, int, str]] = field(default_factory=list)

    def push(self, slot: _Slot) -> None:
        heapq.heappush(self.items, (slot.entry.expires, slot.serial, slot.entry.key))

    def due(self, now: float) -> Iterable[tuple[int, str]]:
        while self.items and self.items[0][0] <= now:
            _, serial, key = heapq.heappop(self.items)
            yield serial, key


class MemoryCache:
    """One process, bounded to `max_entries`. Calls do not await, so each is atomic under
    asyncio (not thread-safe).

    Expiry is exact and cheap: a heap ordered by expiry time is popped at the start of every
    call (O(log n) per expired entry), so an expired entry is never served, never counted in
    `entries`, and leaves its partition's index at once instead of waiting to be evicted.

    Eviction is LRU (an OrderedDict: O(1) per access), across all partitions. Why LRU and not
    LFU: what users ask drifts (a release, an outage, a new price), and LRU adapts at once,
    while LFU keeps yesterday's once-popular answers until their counts are aged away — which
    needs a decay rule to tune. TTLs already retire old answers, so frequency adds little
    protection, and a hit that must update a frequency structure costs more than moving one
    node. A lookup "uses" an entry when it becomes a hit: `get` refreshes it, and a semantic
    candidate is refreshed by `record("semantic_hit", key)`, not by merely being near a query
    (the stage may reject it)."""

    def __init__(self, max_entries: int = 100_000, *, clock: Callable[[], float] = time.time,
                 dim: int = DIMENSIONS) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.dim = dim
        self._clock = clock
        self._entries: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first
        self._keys: dict[int, str] = {}  # index id → key
        self._partitions = Partitions(dim)
        self._expiry = _Expiry()
        self._serials = itertools.count(1)
        self._counters = Counters()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CacheEntry | None:
        self._expire(self._clock())
        slot = self._entries.get(key)
        if slot is None:
            return None
        self._entries.move_to_end(key)
        return slot.entry

    async def nearest(self, partition: str, vector: npt.NDArray[np.float32],
                      k: int = 5) -> list[tuple[CacheEntry, float]]:
        query = checked_vector(vector, self.dim)
        assert query is not None
        self._expire(self._clock())
        found = self._partitions.search(partition, query, k)
        return [(self._entries[self._keys[id_]].entry, score) for id_, score in found]

    async def put(self, entry: CacheEntry) -> None:
        """Store (or replace) `entry`; one already expired, or with `ttl <= 0`, is not kept."""
        vector = checked_vector(entry.vector, self.dim)
        now = self._clock()
        self._expire(now)
        if entry.ttl <= 0 or entry.expires <= now:
            return
        old = self._entries.pop(entry.key, None)
        if old is not None:
            self._forget([old])
        # The vector lives in the FAISS index only: keeping it on the entry too doubled the
        # memory per entry (bench/cache.py: 146 of 335 MiB per 100k entries).
        slot = _Slot(replace(entry, vector=None), next(self._serials))
        if vector is not None:
            self._partitions.add(entry.partition, slot.serial, vector)
            self._keys[slot.serial] = entry.key
        self._entries[entry.key] = slot
        self._expiry.push(slot)
        if len(self._expiry.items) > 2 * len(self._entries) + 1024:
            self._compact()
        evicted: list[_Slot] = []
        while len(self._entries) > self.max_entries:
            evicted.append(self._entries.popitem(last=False)[1])
        if evicted:
            self._forget(evicted)
            self._counters.add("evictions", len(evicted))

    async def clear(self, pipeline: str | None = None,
                    scope: Sequence[str] | None = None) -> int:
        doomed = [slot for slot in self._entries.values()
                  if scope_matches(pipeline, scope, slot.entry.pipeline, slot.entry.scope)]
        for slot in doomed:
            del self._entries[slot.entry.key]
        self._forget(doomed)
        return len(doomed)

    def record(self, kind: CacheEvent, key: str | None = None) -> None:
        """Count what the stage decided; a hit on `key` also makes it most recently used."""
        self._counters.record(kind)
        if key is not None and kind in ("exact_hit", "semantic_hit") and key in self._entries:
            self._entries.move_to_end(key)

    async def stats(self) -> dict[str, int]:
        self._expire(self._clock())
        return {"entries": len(self._entries), "indexed": len(self._keys),
                **self._counters.values}

    async def aclose(self) -> None:
        return None

    def _expire(self, now: float) -> None:
        gone = []
        for serial, key in self._expiry.due(now):
            slot = self._entries.get(key)
            if slot is not None and slot.serial == serial:
                del self._entries[key]
                gone.append(slot)
        if gone:
            self._forget(gone)
            self._counters.add("expirations", len(gone))

    def _forget(self, slots: Sequence[_Slot]) -> None:
        """Take entries (already out of `_entries`) out of their partitions' indexes."""
        indexed = [(slot.entry.partition, slot.serial) for slot in slots
                   if self._keys.pop(slot.serial, None) is not None]
        self._partitions.remove_grouped(indexed)

    def _compact(self) -> None:
        """Drop heap items of replaced entries (a hot key re-put often leaves one per put)."""
        self._expiry.items = [(s.entry.expires, s.serial, s.entry.key)
                              for s in self._entries.values()]
        heapq.heapify(self._expiry.items)


def __getattr__(name: str) -> Any:
    """`from engine.cache.store import RedisCache`, imported on first use."""
    if name == "RedisCache":
        from engine.cache.store_redis import RedisCache

        return RedisCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(backend: str, *, max_entries: int = 100_000, dim: int = DIMENSIONS,
               prefix: str = "engine:cache:",
               clock: Callable[[], float] = time.time) -> CacheStore:
    """The store for a `cache` resource's `backend`: "memory", or a Redis URL (redis://,
    rediss://, unix://). For Redis the size bound is the server's own (`maxmemory` with an
    LRU policy; every entry has a TTL, so `volatile-lru` is enough), hence no max_entries."""
    if backend == "memory":
        return MemoryCache(max_entries, dim=dim, clock=clock)
    if backend.startswith(("redis://", "rediss://", "unix://")):
        from engine.cache.store_redis import RedisCache

        return RedisCache(backend, prefix=prefix, dim=dim)
    raise ValueError("cache backend must be 'memory' or a redis:// URL")
