"""TypiClust (Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite Strategies Suit High
and Low Budgets", ICML 2022).

The labelled and candidate rows are clustered by k-means into min(|labelled| + k, 500) clusters
(`max_clusters`, the authors' cap). Clusters of at most `min_cluster_size` = 5 rows are dropped
(the authors' MIN_CLUSTER_SIZE); the rest are visited round robin, fewest labelled rows first and
larger first among equals, and each visit picks the most *typical* unlabelled row of the cluster:

    typicality(x) = 1 / mean Euclidean distance from x to its K nearest rows of the cluster,

with K = min(20, ⌊cluster size / 2⌋) (`n_neighbors`, the paper's K = 20; the authors' code halves it
for small clusters). The neighbours are the cluster's unlabelled rows not yet picked, as in the
authors' code (which, unlike the paper's formula, averages squared distances; this follows the
paper). k-means: a k-means++ start, then 25 Lloyd iterations by FAISS (its default) on a seeded sample
of at most 256 rows per cluster (FAISS's default), every row then assigned exactly; the authors used
scikit-learn's KMeans (k-means++ start too), or MiniBatchKMeans above 50 clusters.

Cost: k-means, plus an exact kNN search inside each visited cluster (its size squared).
"""

from __future__ import annotations

import numpy as np
import torch

from embedcache.errors import ConfigError
from embedcache.scoring import tie_priority
from embedcache.strategies._common import (Span, best, check_disjoint, check_k, check_positive_int, check_rows,
                                           check_table, device_of, kmeans_labels, knn)

#: The paper's and the authors' defaults.
N_NEIGHBORS = 20
MIN_CLUSTER_SIZE = 5
MAX_CLUSTERS = 500


def typiclust(embeddings: np.ndarray, candidates: np.ndarray, labelled: np.ndarray, k: int, seed: int, *,
              n_neighbors: int = N_NEIGHBORS, min_cluster_size: int = MIN_CLUSTER_SIZE,
              max_clusters: int = MAX_CLUSTERS, kmeans_iterations: int = 25, device: str | torch.device = "cpu",
              block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TypiClust: k candidate rows, the most typical of the largest uncovered clusters.

    embeddings: the table [N, D]; candidates, labelled: disjoint table rows (labelled may be empty: the
    cold start). Returns (rows, scores) in the order picked; a score is the pick's typicality (0 for
    the last unlabelled row of a cluster, which has no neighbours left). The seed drives k-means;
    clusters of equal rank and equally typical rows go by `scoring.tie_priority`. When every cluster
    is at most `min_cluster_size` rows, all clusters are used.
    """
    table = check_table(embeddings)
    candidates = check_rows(candidates, len(table), "candidates")
    labelled = check_rows(labelled, len(table), "labelled")
    check_disjoint(candidates, labelled, len(table))
    k = check_k(k, len(candidates))
    n_neighbors = check_positive_int(n_neighbors, "n_neighbors")
    max_clusters = check_positive_int(max_clusters, "max_clusters")
    kmeans_iterations = check_positive_int(kmeans_iterations, "kmeans_iterations")
    if isinstance(min_cluster_size, bool) or not isinstance(min_cluster_size, (int, np.integer)) \
            or min_cluster_size < 0:
        raise ConfigError(f"min_cluster_size must be a non-negative integer, got {min_cluster_size!r}")
    nodes = np.union1d(candidates, labelled)
    span = Span(table, nodes, device_of(device), block_rows)
    n_clusters = min(len(labelled) + k, max_clusters, len(nodes))
    cluster = kmeans_labels(span, n_clusters, seed, iterations=kmeans_iterations)
    is_labelled = np.zeros(len(span), dtype=bool)
    is_labelled[span.position(labelled)] = True

    sizes = np.bincount(cluster[span.member], minlength=n_clusters)
    labelled_counts = np.bincount(cluster[is_labelled], minlength=n_clusters)
    ids = np.flatnonzero(sizes > min_cluster_size)
    if not len(ids):
        ids = np.flatnonzero(sizes > 0)
    # fewest labelled rows first, then largest, then the tie rule
    ids = ids[np.lexsort((tie_priority(ids, seed), -sizes[ids], labelled_counts[ids]))]

    available = span.member & ~is_labelled  # unlabelled rows not yet picked
    rows, scores = [], []
    visit = 0
    while len(rows) < k:
        members = np.flatnonzero(available & (cluster == ids[visit % len(ids)]))
        visit += 1
        if not len(members):
            continue
        typicality = _typicality(span, members, n_neighbors)
        pick = members[best(typicality, span.span[members], seed)]
        rows.append(span.span[pick])
        scores.append(typicality[np.searchsorted(members, pick)])
        available[pick] = False
    return np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float64)


def _typicality(span: Span, members: np.ndarray, n_neighbors: int) -> np.ndarray:
    """1 / mean distance to the K = min(n_neighbors, ⌊n/2⌋) nearest other members (0 when K = 0)."""
    n_near = min(n_neighbors, len(members) // 2)
    if n_near == 0:
        return np.zeros(len(members))
    x = span.table[span.span[members]]
    d2, _ = knn(x, x, n_near + 1, span.device)  # nearest first; the row itself (distance 0) comes first
    mean = np.sqrt(np.maximum(d2[:, 1:], 0.0)).mean(axis=1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 1.0 / mean
