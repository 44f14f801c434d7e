"""TypiClust: a brute-force reference on the same clusters, the cluster order, cold start, errors."""

from __future__ import annotations

import numpy as np
import pytest

from embedcache.errors import ConfigError
from embedcache.scoring import tie_priority
from embedcache.strategies._common import Span, device_of, kmeans_labels
from embedcache.strategies.typiclust import typiclust


def blobs(sizes, dim: int = 8, spread: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(sizes), dim)) * 10
    points = [c + spread * rng.standard_normal((s, dim)) for c, s in zip(centers, sizes)]
    return np.concatenate(points).astype(np.float32)


def reference_typiclust(x, candidates, labelled, k, seed, n_neighbors=20, min_cluster_size=5, max_clusters=500):
    """The paper's loop, written plainly, on the same k-means labels as the implementation."""
    nodes = np.union1d(candidates, labelled)
    n_clusters = min(len(labelled) + k, max_clusters, len(nodes))
    span = Span(x, nodes, device_of("cpu"))
    cluster_of = dict(zip(span.span[span.member].tolist(), kmeans_labels(span, n_clusters, seed)[span.member].tolist()))
    sizes = {c: 0 for c in range(n_clusters)}
    counts = dict(sizes)
    for row in nodes:
        sizes[cluster_of[row]] += 1
        counts[cluster_of[row]] += row in set(labelled.tolist())
    ids = [c for c in sizes if sizes[c] > min_cluster_size] or [c for c in sizes if sizes[c]]
    ids.sort(key=lambda c: (counts[c], -sizes[c], int(tie_priority(np.array([c]), seed)[0])))
    available = set(candidates.tolist())
    rows, scores, visit = [], [], 0
    while len(rows) < k:
        cluster = ids[visit % len(ids)]
        visit += 1
        members = np.array(sorted(r for r in available if cluster_of[r] == cluster))
        if not len(members):
            continue
        near = min(n_neighbors, len(members) // 2)
        if near == 0:
            typicality = np.zeros(len(members))
        else:
            d = np.sqrt(((x[members, None, :].astype(np.float64) - x[None, members, :]) ** 2).sum(-1))
            np.fill_diagonal(d, np.inf)
            typicality = 1.0 / np.sort(d, axis=1)[:, :near].mean(axis=1)
        tied = np.flatnonzero(typicality == typicality.max())
        pick = tied[np.argmin(tie_priority(members[tied], seed))]
        rows.append(members[pick])
        scores.append(typicality[pick])
        available.discard(members[pick])
    return np.array(rows), np.array(scores)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_reference_on_the_same_clusters(seed):
    x = np.random.default_rng(seed).standard_normal((400, 6)).astype(np.float32)
    labelled = np.arange(0, 400, 25)
    candidates = np.setdiff1d(np.arange(400), labelled)
    rows, scores = typiclust(x, candidates, labelled, 12, seed, n_neighbors=7)
    expected_rows, expected_scores = reference_typiclust(x, candidates, labelled, 12, seed, n_neighbors=7)
    assert np.array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)


def test_uncovered_clusters_first_largest_first_tiny_ones_dropped():
    x = blobs([60, 40, 25, 5])  # the 5-row blob is at most MIN_CLUSTER_SIZE: dropped
    labelled = np.array([0])  # covers the 60-row blob
    candidates = np.arange(1, 130)
    rows, scores = typiclust(x, candidates, labelled, 3, seed=0, max_clusters=4)
    blob = np.searchsorted([60, 100, 125, 130], rows, side="right")
    assert blob.tolist() == [1, 2, 0]  # 40-row blob, 25-row blob, then the covered one
    assert np.all(scores > 0)


def test_cold_start_and_round_robin_beyond_the_clusters():
    x = blobs([30, 30])
    rows, _ = typiclust(x, np.arange(60), [], 4, seed=1, max_clusters=2)
    assert sorted(np.searchsorted([30, 60], rows, side="right").tolist()) == [0, 0, 1, 1]
    assert len(set(rows.tolist())) == 4


def test_deterministic_and_seeded():
    x = np.random.default_rng(3).standard_normal((600, 10)).astype(np.float32)
    first = typiclust(x, np.arange(50, 600), np.arange(50), 10, seed=4)
    assert np.array_equal(first[0], typiclust(x, np.arange(50, 600)[::-1], np.arange(50), 10, seed=4)[0])
    assert np.array_equal(first[1], typiclust(x, np.arange(50, 600), np.arange(50), 10, seed=4, block_rows=64)[1])


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 100}, "k = 100 is more than the 50 candidates"),
    ({"n_neighbors": 0}, "n_neighbors must be a positive integer"),
    ({"max_clusters": -1}, "max_clusters must be a positive integer"),
    ({"min_cluster_size": -2}, "min_cluster_size must be a non-negative integer"),
    ({"kmeans_iterations": 0}, "kmeans_iterations must be a positive integer"),
])
def test_bad_options_name_the_option(kwargs, message):
    x = blobs([30, 30])
    arguments = {"embeddings": x, "candidates": np.arange(10, 60), "labelled": np.arange(10), "k": 3, "seed": 0,
                 **kwargs}
    with pytest.raises(ConfigError, match=message):
        typiclust(**arguments)
