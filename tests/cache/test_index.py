"""SemanticIndex: exact flat search, the switch to HNSW, removal (real and lazy)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from engine.cache.index import SemanticIndex

DIM = 32


def unit(rows: int, seed: int, dim: int = DIM) -> npt.NDArray[np.float32]:
    matrix = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return np.asarray(matrix / np.linalg.norm(matrix, axis=1, keepdims=True), dtype=np.float32)


def test_add_search_remove_on_the_flat_index() -> None:
    index = SemanticIndex(DIM)
    vectors = unit(50, seed=1)
    index.add(list(range(100, 150)), vectors)
    assert len(index) == 50 and index.kind == "flat"
    best = index.search(vectors[7], k=3)
    assert best[0][0] == 107 and best[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [score for _, score in best] == sorted((score for _, score in best), reverse=True)
    index.remove([107, 999])  # unknown ids are ignored
    assert len(index) == 49 and 107 not in index
    assert all(id_ != 107 for id_, _ in index.search(vectors[7], k=49))
    assert len(index.search(vectors[0], k=100)) == 49


def test_re_adding_an_id_replaces_its_vector() -> None:
    index = SemanticIndex(DIM)
    vectors = unit(2, seed=2)
    index.add([1], vectors[:1])
    index.add([1], vectors[1:])
    assert len(index) == 1
    (found, score), = index.search(vectors[1], k=1)
    assert found == 1 and score == pytest.approx(1.0, abs=1e-5)


def test_empty_index_and_bad_shapes() -> None:
    index = SemanticIndex(DIM)
    assert index.search(unit(1, seed=3)[0]) == []
    with pytest.raises(ValueError):
        index.add([1, 2], unit(1, seed=3))
    with pytest.raises(ValueError):
        index.add([1], unit(1, seed=3, dim=DIM + 1))


def test_switch_to_hnsw_keeps_results_correct() -> None:
    """Random normalised vectors; queries are stored vectors plus noise (cosine ≈ 0.9, what a
    cache lookup that should hit looks like). HNSW must agree with flat on ≥ 95 % of top-1."""
    dim, size = 64, 3000
    data = unit(size, seed=4, dim=dim)
    flat = SemanticIndex(dim, hnsw_above=10 * size)
    hnsw = SemanticIndex(dim, hnsw_above=size // 2)
    flat.add(list(range(size)), data)
    hnsw.add(list(range(size // 2)), data[: size // 2])
    assert hnsw.kind == "flat"
    hnsw.add(list(range(size // 2, size)), data[size // 2:])
    assert hnsw.kind == "hnsw" and flat.kind == "flat" and len(hnsw) == size
    picks = np.random.default_rng(5).choice(size, 200, replace=False)
    queries = data[picks] + 0.45 * unit(200, seed=6, dim=dim)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    agree = [hnsw.search(q, k=1)[0][0] == flat.search(q, k=1)[0][0] for q in queries]
    assert np.mean(agree) >= 0.95
    assert all(hnsw.search(data[i], k=1)[0][0] == i for i in picks[:50])


def test_lazy_deletion_never_returns_a_removed_id() -> None:
    dim, size = 32, 2000
    data = unit(size, seed=7, dim=dim)
    index = SemanticIndex(dim, hnsw_above=500, rebuild_share=0.5)
    index.add(list(range(size)), data)
    assert index.kind == "hnsw"
    removed = list(range(0, size, 3))  # a third: below the rebuild share, so all lazy
    index.remove(removed)
    assert index.stale == len(removed) and index.rebuilds == 1  # only the switch
    gone = set(removed)
    for i in range(0, 300):
        results = index.search(data[i], k=10)
        assert len(results) == 10 and not gone & {id_ for id_, _ in results}
        if i not in gone:
            assert results[0][0] == i
    # Past the share the graph is rebuilt from the live vectors only.
    index.remove(list(range(1, size, 3)))
    assert index.stale == 0 and index.rebuilds == 2 and len(index) == size - 1334
    assert all(id_ % 3 == 2 for id_, _ in index.search(data[5], k=50))


def test_re_added_id_is_not_shadowed_by_its_stale_copy() -> None:
    index = SemanticIndex(DIM, hnsw_above=100, rebuild_share=0.9)
    data = unit(300, seed=8)
    index.add(list(range(300)), data)
    index.remove([5])
    index.add([5], data[6:7])  # id 5 now holds vector 6
    assert index.search(data[5], k=1)[0][0] != 5 or index.search(data[5], k=1)[0][1] < 0.99
    assert {id_ for id_, _ in index.search(data[6], k=2)} == {5, 6}


def test_shrinking_falls_back_to_flat() -> None:
    index = SemanticIndex(DIM, hnsw_above=200)
    data = unit(400, seed=9)
    index.add(list(range(400)), data)
    assert index.kind == "hnsw"
    index.remove(list(range(320)))
    assert index.kind == "flat" and len(index) == 80
    assert index.search(data[350], k=1)[0][0] == 350
