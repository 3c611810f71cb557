"""The vectors of one semantic-cache partition, searchable by cosine similarity.

One `SemanticIndex` holds the entries of ONE partition (a scope + fingerprint): the caller
keeps one per partition, so a search can never return another tenant's or another prompt's
entry, and no metadata filter is needed inside FAISS.

Why two index kinds, and why `hnsw_above` = 10 000 (bench/cache_index.py, 2 cores, one
query, random unit vectors, p50): flat inner product costs O(n) — 0.02 ms at 1k, 0.21 ms at
10k, 0.70 ms at 20k, 2.5 ms at 50k, ≈ 10 ms at 100k (memory-bound past the caches) — while
HNSW (M=32, efConstruction=40, efSearch=128) costs 0.06, 0.21, 0.40, 0.57 and ≈ 0.67 ms.
10k is where they cross: below it flat is as fast or faster, exact, removes for real and
costs nothing to build; above it flat soon eats the "+1 ms over the embedding" budget.
The switch builds the graph once (≈ 0.5 s at 10k; ≈ 13 s for 100k, 2 threads): stores
should add off the request path. HNSW recall@1 against flat on cache-like queries (a stored
vector plus noise, cosine ≈ 0.9): 1.000 up to 20k, 0.997 at 50k, 0.987 at 100k (efSearch 64
gave 0.93 at 100k, hence 128). On random queries recall is lower (0.46 at 50k), but there
the nearest entry has cosine ≈ 0.2, far below any hit threshold: a miss either way.
One OpenMP thread: a single query is not faster with 2 threads on 2 cores (flat 10k:
0.21 ms with 1 thread, 0.48 ms with 2), and idle spinning workers steal the core the event
loop and the embedder need.

HNSW cannot remove vectors, so removal there is lazy: FAISS holds *internal* ids, a removed
entry's internal id is dropped from the map and filtered out of results (the search
over-fetches, and widens when too many stale hits come back), and the graph is rebuilt from
the live vectors when stale ones pass `rebuild_share` of it. Re-adding an external id gets a
fresh internal id, so a stale copy can never shadow the new vector. The index falls back to
flat when it shrinks below half of `hnsw_above` (hysteresis: no flapping at the border).

Vectors are kept only inside FAISS (reconstructed for a rebuild), not duplicated in Python.
Not thread-safe: callers serialise access (the cache runs it on the event loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from engine.resources.embeddings import DIMENSIONS

__all__ = ["DEFAULT_HNSW_ABOVE", "SemanticIndex"]

DEFAULT_HNSW_ABOVE = 10_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 128


def _single_thread() -> None:
    """One OpenMP thread for single queries (measured: see the module docstring)."""
    if faiss.omp_get_max_threads() != 1:
        faiss.omp_set_num_threads(1)


class SemanticIndex:
    """Cosine search over L2-normalised float32 vectors with caller-chosen integer ids."""

    def __init__(
        self,
        dim: int = DIMENSIONS,
        *,
        hnsw_above: int = DEFAULT_HNSW_ABOVE,
        rebuild_share: float = 0.2,
        ef_search: int = HNSW_EF_SEARCH,
    ) -> None:
        self.dim = dim
        self.hnsw_above = hnsw_above
        self.rebuild_share = rebuild_share
        self.ef_search = ef_search
        self.rebuilds = 0
        self._to_internal: dict[int, int] = {}
        self._to_external: dict[int, int] = {}
        self._next = 0
        self._hnsw = False
        self._graph: Any = None  # the IndexHNSWFlat inside the id map, when in HNSW mode
        self._index: Any = self._flat()
        _single_thread()

    # -- introspection -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._to_internal)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._to_internal

    @property
    def kind(self) -> str:
        """"flat" or "hnsw" — which index answers searches now."""
        return "hnsw" if self._hnsw else "flat"

    @property
    def stale(self) -> int:
        """Removed vectors still inside the HNSW graph (always 0 for flat)."""
        return int(self._index.ntotal) - len(self._to_internal)

    # -- mutation ----------------------------------------------------------------------------
    def add(self, ids: Sequence[int], vectors: npt.NDArray[np.float32]) -> None:
        """Add (or replace) entries; `vectors` rows are L2-normalised float32 of `dim`."""
        matrix = self._matrix(vectors)
        if matrix.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids for {matrix.shape[0]} vectors")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one add")
        replaced = [i for i in ids if i in self._to_internal]
        if replaced:
            self.remove(replaced)
        internal = np.arange(self._next, self._next + len(ids), dtype=np.int64)
        self._next += len(ids)
        for external, inner in zip(ids, internal.tolist(), strict=True):
            self._to_internal[int(external)] = inner
            self._to_external[inner] = int(external)
        self._index.add_with_ids(matrix, internal)
        if not self._hnsw and len(self) > self.hnsw_above:
            self._rebuild(hnsw=True)

    def remove(self, ids: Sequence[int]) -> None:
        """Remove entries (unknown ids are ignored)."""
        internal = [self._to_internal.pop(int(i)) for i in ids if int(i) in self._to_internal]
        for inner in internal:
            del self._to_external[inner]
        if not internal:
            return
        if not self._hnsw:
            self._index.remove_ids(np.asarray(internal, dtype=np.int64))
        elif len(self) < self.hnsw_above // 2:
            self._rebuild(hnsw=False)
        elif self.stale > self.rebuild_share * self._index.ntotal:
            self._rebuild(hnsw=True)

    # -- search ------------------------------------------------------------------------------
    def search(self, vector: npt.NDArray[np.float32], k: int = 5) -> list[tuple[int, float]]:
        """The `k` nearest live entries as (id, cosine), best first."""
        live = len(self)
        if live == 0 or k <= 0:
            return []
        query = self._matrix(vector.reshape(1, -1))
        want = min(k, live)
        fetch = want if not self._hnsw else min(self._index.ntotal, 2 * want + 8)
        while True:
            if self._hnsw:
                self._graph.hnsw.efSearch = max(self.ef_search, fetch)
            scores, found = self._index.search(query, fetch)
            results = [
                (self._to_external[inner], float(score))
                for inner, score in zip(found[0].tolist(), scores[0].tolist(), strict=True)
                if inner in self._to_external
            ]
            if len(results) >= want or fetch >= self._index.ntotal:
                return results[:want]
            fetch = min(self._index.ntotal, fetch * 4)  # too many stale hits: widen

    # -- internals ---------------------------------------------------------------------------
    def _matrix(self, vectors: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {matrix.shape}")
        return matrix

    def _flat(self) -> Any:
        self._graph = None
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _hnsw_index(self) -> Any:
        hnsw = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.hnsw.efSearch = self.ef_search
        self._graph = hnsw
        return faiss.IndexIDMap2(hnsw)

    def _rebuild(self, *, hnsw: bool) -> None:
        """Rebuild from the live vectors (reconstructed from FAISS, no Python-side copy)."""
        old = self._index
        inner_ids = faiss.vector_to_array(old.id_map).astype(np.int64)
        vectors = old.index.reconstruct_n(0, old.ntotal)
        keep = np.fromiter((i in self._to_external for i in inner_ids.tolist()), dtype=bool,
                           count=len(inner_ids))
        self._index = self._hnsw_index() if hnsw else self._flat()
        self._hnsw = hnsw
        if keep.any():
            self._index.add_with_ids(np.ascontiguousarray(vectors[keep]), inner_ids[keep])
        self.rebuilds += 1
