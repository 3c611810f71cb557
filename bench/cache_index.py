"""Measure the semantic cache's vector index: flat vs HNSW search latency, recall, build cost.

Prints, at 1k / 10k / 20k / 50k / 100k random L2-normalised 384-d vectors: flat
inner-product search p50/p95 for one query with 1 and 2 OpenMP threads, HNSW search p50/p95
(1 thread), HNSW build time, and HNSW recall@1 against flat for two query kinds — stored
vectors plus noise (what a cache lookup that should hit looks like, cosine ≈ 0.9) and fresh
random vectors (the adversarial case: no true neighbour stands out). Also the `SemanticIndex`
end-to-end search with 20 % lazily deleted entries. The figures pick `hnsw_above`.

    .venv/bin/python bench/cache_index.py [--sizes 1000,10000,100000] [--queries 300]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from engine.cache.index import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, SemanticIndex

DIM = 384


def unit(rows: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    matrix = rng.standard_normal((rows, DIM)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix.astype(np.float32)


def near(base: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Perturb stored vectors to cosine ≈ 0.9 with their source (a paraphrase-like query)."""
    noisy = base + 0.5 * unit(base.shape[0], rng)
    return np.asarray(noisy / np.linalg.norm(noisy, axis=1, keepdims=True), dtype=np.float32)


def timed(index: Any, queries: npt.NDArray[np.float32], k: int = 5) -> tuple[float, float]:
    """p50 / p95 in ms of one-query searches."""
    samples = []
    for row in queries:
        start = time.perf_counter()
        index.search(row.reshape(1, -1), k)
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[len(samples) // 2] * 1000, samples[int(0.95 * len(samples))] * 1000


def top1(index: Any, queries: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    return np.asarray(index.search(queries, 1)[1][:, 0], dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,20000,50000,100000")
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    print(f"HNSW M={HNSW_M} efConstruction={HNSW_EF_CONSTRUCTION} efSearch={HNSW_EF_SEARCH}")
    header = ("size", "flat1 p50", "flat1 p95", "flat2 p50", "hnsw p50", "hnsw p95",
              "build s", "rec@1 near", "rec@1 rand", "SI p50 20%del")
    print(" | ".join(f"{h:>11}" for h in header))
    for size in (int(s) for s in args.sizes.split(",")):
        data = unit(size, rng)
        ids = np.arange(size, dtype=np.int64)
        pick = rng.choice(size, args.queries, replace=False)
        near_q, rand_q = near(data[pick], rng), unit(args.queries, rng)
        flat = faiss.IndexFlatIP(DIM)
        flat.add(data)
        faiss.omp_set_num_threads(2)
        flat2 = timed(flat, near_q)
        faiss.omp_set_num_threads(1)
        flat1 = timed(flat, near_q)
        start = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        faiss.omp_set_num_threads(2)  # building is batched work: threads help
        hnsw.add(data)
        faiss.omp_set_num_threads(1)
        build = time.perf_counter() - start
        hnsw.hnsw.efSearch = HNSW_EF_SEARCH
        hnsw_t = timed(hnsw, near_q)
        rec_near = float(np.mean(top1(hnsw, near_q) == top1(flat, near_q)))
        rec_rand = float(np.mean(top1(hnsw, rand_q) == top1(flat, rand_q)))
        # The class end to end, forced to HNSW, after removing 15 % (below the rebuild share).
        index = SemanticIndex(DIM, hnsw_above=0)
        index.add(ids.tolist(), data)
        index.remove(ids[: int(size * 0.15)].tolist())
        si = timed(index, near_q)
        row = (size, *[f"{v:.3f}" for v in (*flat1, flat2[0], *hnsw_t)], f"{build:.2f}",
               f"{rec_near:.3f}", f"{rec_rand:.3f}", f"{si[0]:.3f}")
        print(" | ".join(f"{v:>11}" for v in row), flush=True)


if __name__ == "__main__":
    main()
