"""Cluster-Margin (Citovsky, DeSalvo, Gentile, Karydas, Rajagopalan, Rostamizadeh & Kumar, "Batch Active
Learning at Scale", NeurIPS 2021).

Once per run, the pool is clustered by hierarchical agglomerative clustering (HAC) with average
linkage on its embeddings (`hac_clusters`). Each round (`cluster_margin`) takes the k_m = 10·k rows
with the smallest margin (the highest margin score), groups them by their cluster, orders the
groups from smallest to largest, and fills the batch round robin: one row drawn at random from each
group in turn, until k rows are chosen. Small groups (rare regions) are visited first and no group
gives a second row before every group has given one.

The paper cuts the HAC tree at a distance ε tuned per dataset; here either `distance_threshold`
(that ε) or `n_clusters` sets the cut, and with neither the tree is cut into ⌈√n⌉ clusters (our
default, not the paper's). Exact average-linkage HAC needs all n(n-1)/2 distances: up to
`max_exact_rows` = 5,000 rows (100 MB) it is exact (scipy); in larger pools a seeded sample of that
many rows (landmarks) is clustered exactly and every other row joins its nearest landmark's cluster
(FAISS search): an approximation of average linkage, as the paper's distributed HAC is of exact HAC,
at O(n · max_exact_rows · D) cost.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.cluster.hierarchy
import torch

from embedcache.errors import ConfigError
from embedcache.scoring import tie_priority, top_k
from embedcache.strategies._common import (Span, check_aligned, check_k, check_positive_int, check_rows,
                                           check_table, device_of, generator, knn, row_uniforms, to_device, to_host)

#: k_m = MARGIN_FACTOR · k margin candidates (the paper's setting).
MARGIN_FACTOR = 10
MAX_EXACT_ROWS = 5000


def hac_clusters(embeddings: np.ndarray, rows: np.ndarray, seed: int, *, n_clusters: int | None = None,
                 distance_threshold: float | None = None, max_exact_rows: int = MAX_EXACT_ROWS,
                 device: str | torch.device = "cpu", block_rows: int | None = None) -> np.ndarray:
    """Average-linkage HAC cluster (0, 1, ...) of each of `rows` (aligned with `rows` as given).

    Cut the tree into `n_clusters` clusters, or where merges pass `distance_threshold` (Euclidean);
    with neither, into ⌈√n⌉ clusters. The seed draws the landmarks of pools larger than
    `max_exact_rows` (exact HAC is deterministic).
    """
    table = check_table(embeddings)
    given = np.asarray(rows)
    order = np.argsort(given, kind="stable")
    rows = check_rows(given[order], len(table), "rows")
    if len(rows) < 2:
        raise ConfigError(f"HAC needs at least 2 rows, got {len(rows)}")
    max_exact_rows = check_positive_int(max_exact_rows, "max_exact_rows")
    if n_clusters is not None and distance_threshold is not None:
        raise ConfigError("give n_clusters or distance_threshold, not both")
    if n_clusters is not None:
        n_clusters = check_positive_int(n_clusters, "n_clusters")
    elif distance_threshold is not None:
        if not (isinstance(distance_threshold, (int, float, np.integer, np.floating))
                and math.isfinite(distance_threshold) and distance_threshold > 0):
            raise ConfigError(f"distance_threshold must be a positive finite distance, got {distance_threshold!r}")
    else:
        n_clusters = math.ceil(math.sqrt(len(rows)))
    span = Span(table, rows, device_of(device), block_rows)
    members = np.flatnonzero(span.member)
    if len(rows) <= max_exact_rows:
        points, assignment = span.host_take(members), np.arange(len(rows))
    else:
        landmarks = np.sort(generator(seed, "hac landmarks").choice(members, size=max_exact_rows, replace=False))
        points = span.host_take(landmarks)
        assignment = np.empty(len(rows), dtype=np.int64)
        for lo in range(0, len(members), span.block_rows):
            _, nearest = knn(span.host_take(members[lo:lo + span.block_rows]), points, 1, span.device)
            assignment[lo:lo + len(nearest)] = nearest[:, 0]
    tree = scipy.cluster.hierarchy.linkage(_condensed_distances(points, span.device), method="average")
    if n_clusters is not None:
        labels = scipy.cluster.hierarchy.fcluster(tree, t=min(n_clusters, len(points)), criterion="maxclust")
    else:
        labels = scipy.cluster.hierarchy.fcluster(tree, t=float(distance_threshold), criterion="distance")
    clusters = np.empty(len(rows), dtype=np.int64)
    clusters[order] = labels[assignment] - 1
    return clusters


def _condensed_distances(points: np.ndarray, device: torch.device) -> np.ndarray:
    """scipy's condensed vector of pairwise Euclidean distances (float64), a block of rows at a time."""
    n = len(points)
    condensed = np.empty(n * (n - 1) // 2, dtype=np.float64)
    x = to_device(np.ascontiguousarray(points, dtype=np.float32), device)
    norms = (x * x).sum(1)
    step = max(1, (1 << 22) // n)
    offset = 0
    for lo in range(0, n - 1, step):
        hi = min(lo + step, n - 1)
        d2 = x[lo:hi] @ x.T
        d2 *= -2.0
        d2 += norms[lo:hi, None]
        d2 += norms[None, :]
        block = np.sqrt(np.maximum(to_host(d2).astype(np.float64), 0.0))
        for i in range(lo, hi):  # row i's distances to rows i+1.. are contiguous in the condensed vector
            condensed[offset:offset + n - i - 1] = block[i - lo, i + 1:]
            offset += n - i - 1
    return condensed


def cluster_margin(scores: np.ndarray, candidates: np.ndarray, clusters: np.ndarray, k: int, seed: int, *,
                   margin_candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cluster-Margin's round robin over the clusters of the k_m lowest-margin candidates.

    scores: margin scores (higher = smaller margin, e.g. embedcache's `-(p1 - p2)`) and clusters (from
    `hac_clusters`), both aligned with `candidates`. margin_candidates: k_m (default 10·k, capped at
    the number of candidates). Returns (rows, scores) in the order chosen. The margin ranking's ties,
    groups of equal size and the draw inside each group follow `scoring.tie_priority` and hashes of
    (row, seed).
    """
    given = np.asarray(candidates)
    check_rows(given, np.iinfo(np.int64).max, "candidates")
    rows = given.astype(np.int64)
    k = check_k(k, len(rows))
    scores = check_aligned(scores, len(rows), "scores", 1)
    clusters = check_aligned(clusters, len(rows), "clusters", 1)
    if not np.issubdtype(clusters.dtype, np.integer):
        raise ConfigError(f"clusters must be integer cluster ids, got {clusters.dtype}")
    if margin_candidates is None:
        margin_candidates = min(len(rows), MARGIN_FACTOR * k)
    margin_candidates = check_positive_int(margin_candidates, "margin_candidates")
    if not k <= margin_candidates <= len(rows):
        raise ConfigError(f"margin_candidates must be between k ({k}) and the number of candidates ({len(rows)}), "
                          f"got {margin_candidates}")
    position = np.argsort(rows, kind="stable")
    top_rows, _ = top_k(scores, rows, margin_candidates, seed)
    where = position[np.searchsorted(rows[position], top_rows)]
    groups = clusters[where]
    # rows of each group in a seeded random order; groups from smallest to largest, ties by the tie rule
    draw = row_uniforms(top_rows, seed, "cluster margin")
    ids, sizes = np.unique(groups, return_counts=True)
    group_order = ids[np.lexsort((tie_priority(ids, seed), sizes))]
    rank_of_group = np.empty(ids.max() - ids.min() + 1, dtype=np.int64)
    rank_of_group[group_order - ids.min()] = np.arange(len(ids))
    inside = np.lexsort((draw, rank_of_group[groups - ids.min()]))  # by group, then by draw
    group_rank = rank_of_group[groups[inside] - ids.min()]
    turn = np.arange(len(inside)) - np.searchsorted(group_rank, group_rank)  # position within its group
    round_robin = inside[np.lexsort((group_rank, turn))][:k]  # every group's first row, then second, ...
    return top_rows[round_robin], np.asarray(scores)[where[round_robin]]
