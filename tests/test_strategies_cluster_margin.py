"""Cluster-Margin: the round robin equals a plain reference; HAC recovers separated clusters, exactly
and through the k-means summary."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.cluster.hierarchy
import scipy.spatial.distance

from embedcache.errors import ConfigError
from embedcache.scoring import tie_priority, top_k
from embedcache.strategies._common import row_uniforms
from embedcache.strategies.cluster_margin import cluster_margin, hac_clusters


def reference_round_robin(scores, rows, clusters, k, seed, k_m):
    top, _ = top_k(scores, rows, k_m, seed)
    group_of = {r: clusters[list(rows).index(r)] for r in top.tolist()}
    groups: dict[int, list[int]] = {}
    for r in top.tolist():
        groups.setdefault(group_of[r], []).append(r)
    draw = dict(zip(top.tolist(), row_uniforms(top, seed, "cluster margin")))
    order = sorted(groups, key=lambda g: (len(groups[g]), int(tie_priority(np.array([g]), seed)[0])))
    queues = [sorted(groups[g], key=lambda r: draw[r]) for g in order]
    picked = []
    while len(picked) < k:
        for queue in queues:
            if queue and len(picked) < k:
                picked.append(queue.pop(0))
    return np.array(picked)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_robin_matches_the_reference(seed):
    rng = np.random.default_rng(seed)
    rows = rng.permutation(np.arange(500, 800))
    scores = -rng.random(300)
    clusters = rng.integers(0, 12, 300)
    picked, picked_scores = cluster_margin(scores, rows, clusters, 15, seed)
    assert np.array_equal(picked, reference_round_robin(scores, rows, clusters, 15, seed, 150))
    lookup = dict(zip(rows.tolist(), scores.tolist()))
    assert picked_scores.tolist() == [lookup[r] for r in picked.tolist()]


def test_smallest_group_first_and_one_row_per_group_per_turn():
    rows = np.arange(10)
    scores = np.linspace(-0.1, -1.0, 10)  # row 0 has the smallest margin
    clusters = np.array([0, 0, 0, 0, 1, 1, 2, 0, 1, 3])
    picked, _ = cluster_margin(scores, rows, clusters, 4, seed=0, margin_candidates=10)
    groups = clusters[picked]
    assert groups[0] == 3 and groups[1] == 2 and sorted(groups.tolist()) == [0, 1, 2, 3]


def test_hac_matches_scipy_on_exact_distances():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.2, size=(40, 3)) for c in (0, 5, 10)]).astype(np.float32)
    tree = scipy.cluster.hierarchy.linkage(scipy.spatial.distance.pdist(x.astype(np.float64)), method="average")
    expected = scipy.cluster.hierarchy.fcluster(tree, t=3, criterion="maxclust")
    order = rng.permutation(120)
    ours = hac_clusters(x, order, seed=0, n_clusters=3)
    same = ours[:, None] == ours[None, :]
    assert np.array_equal(same, expected[order][:, None] == expected[order][None, :])
    assert len(np.unique(hac_clusters(x, np.arange(120), seed=0, distance_threshold=3.0))) == 3
    assert len(np.unique(hac_clusters(x, np.arange(120), seed=0))) == 11  # ⌈√120⌉


def test_hac_on_landmarks_of_a_large_pool_keeps_separated_clusters():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(c, 0.3, size=(400, 4)) for c in (0, 8, 16, 24)]).astype(np.float32)
    clusters = hac_clusters(x, np.arange(1600), seed=3, n_clusters=4, max_exact_rows=50)
    truth = np.repeat(np.arange(4), 400)
    assert np.array_equal(clusters[:, None] == clusters[None, :], truth[:, None] == truth[None, :])
    assert np.array_equal(clusters, hac_clusters(x, np.arange(1600), seed=3, n_clusters=4, max_exact_rows=50))


@pytest.mark.parametrize("call, message", [
    (lambda: cluster_margin(np.zeros(5), np.arange(5), np.zeros(5, int), 3, 0, margin_candidates=2),
     r"margin_candidates must be between k \(3\)"),
    (lambda: cluster_margin(np.zeros(5), np.arange(5), np.zeros(5), 3, 0), "clusters must be integer"),
    (lambda: cluster_margin(np.zeros(5), np.arange(5), np.zeros(4, int), 3, 0), "clusters must have 1 dimensions"),
    (lambda: cluster_margin(np.zeros(5), np.arange(5), np.zeros(5, int), 6, 0), "k = 6 is more than"),
    (lambda: hac_clusters(np.zeros((5, 2), np.float32), np.arange(5), 0, n_clusters=2, distance_threshold=1.0),
     "give n_clusters or distance_threshold, not both"),
    (lambda: hac_clusters(np.zeros((5, 2), np.float32), np.arange(5), 0, distance_threshold=0.0),
     "distance_threshold must be a positive"),
    (lambda: hac_clusters(np.zeros((5, 2), np.float32), np.arange(5), 0, n_clusters=0),
     "n_clusters must be a positive integer"),
    (lambda: hac_clusters(np.zeros((5, 2), np.float32), np.arange(1), 0), "HAC needs at least 2 rows"),
])
def test_bad_options_name_the_option(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
