"""SEALS kNN candidate pools: the union of the labelled rows' neighbours, grown incrementally."""

from __future__ import annotations

import numpy as np
import pytest

from embedcache.errors import ConfigError
from embedcache.strategies.candidates import KnnCandidates


def reference_candidates(x, pool, labelled, k, metric="l2"):
    vectors = x.astype(np.float64)
    if metric == "cosine":
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    found = set()
    for row in labelled:
        others = pool[pool != row]
        distance = ((vectors[others] - vectors[row]) ** 2).sum(1)
        found |= set(others[np.argsort(distance, kind="stable")[:k]].tolist())
    return np.array(sorted(found - set(labelled.tolist())), dtype=np.int64)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_union_of_neighbours_grown_as_labels_arrive(metric):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6)).astype(np.float32)
    pool = np.sort(rng.choice(300, 250, replace=False))
    outside = np.setdiff1d(np.arange(300), pool)[:2]  # labelled rows need not be in the pool
    first = np.concatenate([pool[[3, 50, 120]], outside])
    candidates = KnnCandidates(x, pool, n_neighbors=7, metric=metric)
    candidates.add_labelled(first)
    assert np.array_equal(candidates.candidates(), reference_candidates(x, pool, np.sort(first), 7, metric))
    second = pool[[7, 200]]
    candidates.add_labelled(second)
    both = np.sort(np.concatenate([first, second]))
    assert np.array_equal(candidates.candidates(), reference_candidates(x, pool, both, 7, metric))
    one_shot = KnnCandidates(x, pool, n_neighbors=7, metric=metric, block_rows=2)
    one_shot.add_labelled(both)
    assert np.array_equal(one_shot.candidates(), candidates.candidates())


def test_labelling_a_candidate_removes_it_and_repeats_change_nothing():
    x = np.random.default_rng(1).standard_normal((100, 4)).astype(np.float32)
    candidates = KnnCandidates(x, np.arange(100), n_neighbors=5)
    candidates.add_labelled([10])
    before = candidates.candidates()
    candidates.add_labelled([10, before[0]])
    after = candidates.candidates()
    assert before[0] not in after and 10 not in after and set(before[1:].tolist()) <= set(after.tolist())
    candidates.add_labelled([10])
    assert np.array_equal(candidates.candidates(), after)


def test_no_copy_of_the_pool():
    import tracemalloc

    x = np.random.default_rng(2).standard_normal((60_000, 256)).astype(np.float32)  # 61 MB
    tracemalloc.start()
    try:
        candidates = KnnCandidates(x, np.arange(60_000), n_neighbors=10, block_rows=4096)
        candidates.add_labelled(np.arange(0, 60_000, 600))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.3 * x.nbytes and len(candidates.candidates()) > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"n_neighbors": 0}, "n_neighbors must be a positive integer"),
    ({"metric": "dot"}, "metric must be one of"),
    ({"pool": np.array([1, 1])}, "pool lists rows more than once"),
])
def test_bad_options_name_the_option(kwargs, message):
    arguments = {"embeddings": np.zeros((10, 2), np.float32), "pool": np.arange(10), **kwargs}
    with pytest.raises(ConfigError, match=message):
        KnnCandidates(**arguments)
