"""ProbCover: the greedy cover and the purity rule equal brute-force references exactly; the graph is
built block by block without an N × N matrix."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from embedcache.errors import ConfigError
from embedcache.scoring import tie_priority
from embedcache.strategies._common import Span, device_of, kmeans_labels
from embedcache.strategies.probcover import probcover, purity_radius


def integer_pool(n: int = 90, dim: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-3, 4, size=(n, dim)).astype(np.float32)


def squared_distances(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def reference_cover(x, candidates, labelled, k, seed, radius2):
    """The paper's greedy on a dense adjacency matrix: d² < radius², every row covering itself."""
    nodes = np.union1d(candidates, labelled)
    adjacent = squared_distances(x[nodes]) < radius2
    covered = adjacent[np.searchsorted(nodes, labelled)].any(axis=0)
    eligible = np.isin(nodes, candidates)
    rows, scores = [], []
    for _ in range(k):
        degree = np.where(eligible, (adjacent & ~covered).sum(axis=1), -1)
        tied = np.flatnonzero(degree == degree.max())
        pick = tied[np.argmin(tie_priority(nodes[tied], seed))]
        rows.append(nodes[pick])
        scores.append(degree[pick])
        covered |= adjacent[pick]
        eligible[pick] = False
    return np.array(rows), np.array(scores, dtype=np.float64)


def reference_radius2(x, rows, clusters, alpha):
    """The largest r² whose open balls are pure for at least alpha of the rows, by trying every candidate r²."""
    d2 = squared_distances(x[rows])
    other = clusters[:, None] != clusters[None, :]
    best = None
    for r2 in np.unique(d2):
        purity = 1 - ((d2 < r2) & other).any(axis=1).mean()
        if purity >= alpha:
            best = r2
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_greedy_cover_matches_brute_force_exactly(seed, layout):
    x = integer_pool(seed=seed)
    rng = np.random.default_rng(seed)
    if layout == "dense":
        labelled = rng.choice(90, 5, replace=False)
        candidates = np.setdiff1d(np.arange(90), labelled)
    else:
        chosen = rng.choice(90, 40, replace=False)
        labelled, candidates = chosen[:4], chosen[4:]
    delta = math.sqrt(5.5)  # between integer squared distances: no pair sits on the boundary
    rows, scores = probcover(x, rng.permutation(candidates), labelled, 10, seed, delta=delta, block_rows=16)
    expected_rows, expected_scores = reference_cover(x, candidates, labelled, 10, seed, 5.5)
    assert np.array_equal(rows, expected_rows)
    assert np.array_equal(scores, expected_scores)


@pytest.mark.parametrize("alpha", [0.95, 0.8, 1.0])
def test_purity_radius_matches_the_definition(alpha):
    x = integer_pool(n=70, seed=3)
    rows = np.arange(70)
    clusters = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)
    radius = purity_radius(x, rows[::-1], clusters[::-1], alpha, block_rows=8)
    assert radius ** 2 == pytest.approx(reference_radius2(x, rows, clusters, alpha), rel=1e-12)


def test_delta_from_the_purity_rule_covers_like_the_reference():
    x = integer_pool(n=90, seed=4)
    labelled, candidates = np.arange(6), np.arange(6, 90)
    rows, scores = probcover(x, candidates, labelled, 8, seed=2, n_classes=3, block_rows=16, purity_sample=10)
    span = Span(x, np.arange(90), device_of("cpu"), 16)
    clusters = kmeans_labels(span, 3, 2)
    radius2 = reference_radius2(x, np.arange(90), clusters, 0.95)
    expected_rows, expected_scores = reference_cover(x, candidates, labelled, 8, 2, radius2)
    assert np.array_equal(rows, expected_rows) and np.array_equal(scores, expected_scores)


def test_a_too_low_sample_bound_finds_the_edges_again(monkeypatch):
    import embedcache.strategies.probcover as module

    x = integer_pool(n=90, seed=4)
    expected = probcover(x, np.arange(6, 90), np.arange(6), 8, seed=2, n_classes=3)
    monkeypatch.setattr(module, "_purity_bound2", lambda *args: 0.5)  # keeps almost no edges in the first pass
    rows, scores = probcover(x, np.arange(6, 90), np.arange(6), 8, seed=2, n_classes=3)
    assert np.array_equal(rows, expected[0]) and np.array_equal(scores, expected[1])


def test_one_cluster_gives_no_bound_and_a_clear_error():
    """A sample all in one cluster bounds nothing (no edges are kept at first, not every pair); when every
    row is in one cluster no radius exists at all."""
    from embedcache.strategies.probcover import _Graph, _purity_bound2

    x = integer_pool(n=40)
    graph = _Graph(x, np.arange(40), device_of("cpu"), 16)
    graph.sort_by_cluster(np.zeros(40, dtype=np.int64))
    assert _purity_bound2(graph, 0.95, 10, seed=0) == 0.0
    with pytest.raises(ConfigError, match="no radius separates clusters"):
        purity_radius(x, np.arange(40), np.zeros(40, dtype=np.int64))


def test_cold_start_everything_covered_and_determinism():
    x = integer_pool(seed=5)
    first = probcover(x, np.arange(90), [], 90, seed=1, delta=1.5)
    assert sorted(first[0].tolist()) == list(range(90))  # covering ends; the tie rule orders the rest
    assert first[1][-1] == 0 and np.all(np.diff(first[1]) <= 0)
    again = probcover(x, np.arange(90)[::-1], [], 90, seed=1, delta=1.5, block_rows=5)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


def test_no_dense_pair_matrix():
    """The pair pass holds one block pair at a time: peak memory far below an N × N float matrix."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tracemalloc.start()
    try:
        rows, scores = probcover(x, np.arange(100, 6000), np.arange(100), 5, seed=0, n_classes=4, block_rows=512)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6000 * 6000 * 4 / 8  # an N × N float32 matrix is 144 MB
    assert len(rows) == 5 and scores[0] >= scores[-1]


@pytest.mark.parametrize("kwargs, message", [
    ({"delta": 0.0}, "delta must be a positive finite distance"),
    ({"delta": -1.0}, "delta must be a positive finite distance"),
    ({"delta": float("nan")}, "delta must be a positive finite distance"),
    ({}, "ProbCover needs delta, or n_classes"),
    ({"n_classes": 1}, "n_classes must be an integer of at least 2"),
    ({"n_classes": 3, "alpha": 0.0}, r"alpha \(the purity threshold\) must be in \(0, 1\]"),
    ({"n_classes": 3, "alpha": 1.5}, r"alpha \(the purity threshold\) must be in \(0, 1\]"),
    ({"n_classes": 500}, "500 clusters asked for, but only 90 rows"),
    ({"delta": 1.0, "purity_sample": 0}, "purity_sample must be a positive integer"),
    ({"delta": 1.0, "k": 91}, "k = 91 is more than the 85 candidates"),
])
def test_bad_options_name_the_option(kwargs, message):
    arguments = {"embeddings": integer_pool(), "candidates": np.arange(5, 90), "labelled": np.arange(5), "k": 3,
                 "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        probcover(**arguments)
