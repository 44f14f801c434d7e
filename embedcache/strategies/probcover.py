"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering Lens", NeurIPS 2022).

The rows (labelled and candidates) are the vertices of the δ-ball graph: an edge joins x and x' when
‖x - x'‖ < δ (strictly, as the authors' code; every row covers itself). Rows within δ of a labelled
row are covered; each pick is the candidate covering the most uncovered rows (greedy max coverage),
whose neighbours then count as covered. Once everything is covered every candidate covers 0 and the
tie rule picks.

δ: the paper takes the largest δ whose *purity* is at least α = 0.95, where a row's δ-ball is pure
when all rows in it share its k-means cluster (k-means with as many clusters as classes, standing in
for the unknown labels). A ball is pure exactly when δ is at most the distance to the nearest row of
another cluster, so purity(δ) is the fraction of rows whose such distance is at least δ, and the
largest pure-enough δ is a quantile of those distances: computed exactly here, not on a grid.
The paper's features are L2-normalised self-supervised embeddings; pass normalised vectors to match.

Cost: the δ-ball graph is found by one pass over the pairs of rows, each pair computed once (a block
of rows against the blocks after it; the graph is kept as sparse edge lists, never an N × N matrix).
The same pass gives every row's distance to the nearest row of another cluster: δ is bounded from
above first by that distance on a seeded sample of `purity_sample` rows, edges up to the bound are
kept, and the exact δ then filters them (a second pass runs only if the bound was too low). This is
O(N² D) arithmetic, like the authors' code, and needs one float32 copy of the rows' vectors, ordered
by cluster so most block pairs need no per-pair cluster test.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse
import torch

from embedcache.errors import ConfigError
from embedcache.strategies._common import (Span, best, check_disjoint, check_k, check_positive_int, check_rows,
                                           check_table, device_of, flat_where, generator, kmeans_labels, row_min,
                                           to_device, to_host)

ALPHA = 0.95
#: Rows of the graph per block of the pair pass (a block pair is 2048² float32 = 16 MiB).
PAIR_BLOCK = 2048
#: Rows whose nearest other-cluster distance bounds δ before the full pass.
PURITY_SAMPLE = 1000


def probcover(embeddings: np.ndarray, candidates: np.ndarray, labelled: np.ndarray, k: int, seed: int, *,
              delta: float | None = None, n_classes: int | None = None, alpha: float = ALPHA,
              kmeans_iterations: int = 25, purity_sample: int = PURITY_SAMPLE, device: str | torch.device = "cpu",
              block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ProbCover's greedy max coverage: k candidate rows, each covering the most uncovered rows.

    embeddings: the table [N, D]; candidates, labelled: disjoint table rows (labelled may be empty: the
    cold start). delta: the ball radius; when None it is chosen by the purity rule with `n_classes`
    k-means clusters and purity `alpha` (the seed drives k-means and the purity sample). Returns
    (rows, scores) in the order picked; a score is the number of rows the pick newly covered.
    Candidates covering equally many rows go by `scoring.tie_priority(row, seed)`.
    """
    table = check_table(embeddings)
    candidates = check_rows(candidates, len(table), "candidates")
    labelled = check_rows(labelled, len(table), "labelled")
    check_disjoint(candidates, labelled, len(table))
    k = check_k(k, len(candidates))
    _check_radius_options(delta, n_classes, alpha)
    purity_sample = check_positive_int(purity_sample, "purity_sample")
    nodes = np.union1d(candidates, labelled)
    graph = _Graph(table, nodes, device_of(device), block_rows)
    if delta is None:
        graph.sort_by_cluster(kmeans_labels(graph.span, n_classes, seed, iterations=kmeans_iterations))
        bound2 = _purity_bound2(graph, alpha, purity_sample, seed)
        edges, nearest_other2 = graph.pass_over_pairs(bound2, purity=True)
        radius2 = _quantile_radius2(nearest_other2, alpha)
        if radius2 > bound2:  # the sample's bound was too low: find the edges again
            edges, _ = graph.pass_over_pairs(radius2, purity=False)
        else:
            edges = tuple(e[edges[2] < radius2] for e in edges)
    else:
        edges, _ = graph.pass_over_pairs(float(delta) ** 2, purity=False)
    return graph.greedy_cover(edges[0], edges[1], graph.positions_of(labelled), graph.positions_of(candidates),
                              k, seed)


def purity_radius(embeddings: np.ndarray, rows: np.ndarray, clusters: np.ndarray, alpha: float = ALPHA, *,
                  device: str | torch.device = "cpu", block_rows: int | None = None) -> float:
    """ProbCover's δ for given cluster labels (aligned with `rows`): the largest δ such that at least a
    fraction `alpha` of the rows have no row of another cluster at distance < δ. Exact (one pass over
    all pairs); `probcover(delta=None)` computes the same δ from k-means while it finds the graph."""
    table = check_table(embeddings)
    given = np.asarray(rows)
    clusters = np.asarray(clusters)
    if clusters.shape != given.shape or not np.issubdtype(clusters.dtype, np.integer):
        raise ConfigError(f"clusters must be one integer label per row ({given.shape}), got {clusters.shape}")
    _check_alpha(alpha)
    order = np.argsort(given, kind="stable")
    rows = check_rows(given[order], len(table), "rows")
    graph = _Graph(table, rows, device_of(device), block_rows)
    labels = np.full(len(graph.span), -1, dtype=np.int64)
    labels[graph.span.position(rows)] = clusters[order]
    graph.sort_by_cluster(labels)
    _, nearest_other2 = graph.pass_over_pairs(0.0, purity=True)
    return math.sqrt(_quantile_radius2(nearest_other2, alpha))


def _check_radius_options(delta, n_classes, alpha) -> None:
    if delta is not None:
        if not (isinstance(delta, (int, float, np.floating, np.integer)) and math.isfinite(delta) and delta > 0):
            raise ConfigError(f"delta must be a positive finite distance, got {delta!r}")
        return
    if n_classes is None:
        raise ConfigError("ProbCover needs delta, or n_classes to choose delta by the purity rule")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ConfigError(f"n_classes must be an integer of at least 2, got {n_classes!r}")
    _check_alpha(alpha)


def _check_alpha(alpha) -> None:
    if not (isinstance(alpha, (int, float, np.floating)) and 0 < alpha <= 1):
        raise ConfigError(f"alpha (the purity threshold) must be in (0, 1], got {alpha!r}")


def _quantile_radius2(nearest_other2: np.ndarray, alpha: float) -> float:
    """The largest r² with #{i: d_i² ≥ r²} ≥ alpha·n: the ⌊(1 - alpha)·n⌋-th smallest d_i² (0-based)."""
    n = len(nearest_other2)
    index = min(n - 1, int(math.floor((1.0 - alpha) * n + 1e-9)))
    value = float(np.partition(nearest_other2, index)[index])
    if not math.isfinite(value):
        raise ConfigError("every row's k-means cluster is the only one: no radius separates clusters "
                          "(too few distinct rows for n_classes clusters)")
    return value


def _purity_bound2(graph: "_Graph", alpha: float, sample_size: int, seed: int) -> float:
    """An upper bound of δ² with high probability: a higher quantile of the nearest other-cluster
    distances of a seeded sample of rows (3 binomial standard deviations above 1 - alpha)."""
    n = graph.n_nodes
    size = min(n, sample_size)
    sample = np.sort(generator(seed, "probcover purity sample").choice(n, size=size, replace=False))
    nearest = graph.nearest_other2(sample)
    level = (1.0 - alpha) + 3.0 * math.sqrt(alpha * (1.0 - alpha) / size) + 1.0 / size
    index = min(size - 1, int(math.ceil(level * size)))
    bound = float(np.partition(nearest, index)[index])
    return bound if math.isfinite(bound) else 0.0  # no bound (a sample in one cluster): keep no edges at first


def _runs_of(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, stop, value) of the runs of equal values in a sorted array."""
    cuts = np.concatenate([[0], np.flatnonzero(labels[1:] != labels[:-1]) + 1, [len(labels)]])
    return [(int(a), int(b), int(labels[a])) for a, b in zip(cuts[:-1], cuts[1:])]


class _Graph:
    """The rows as graph vertices 0..n-1 (in table-row order, or by cluster once `sort_by_cluster` ran),
    with their vectors augmented so one matrix product gives squared distances:
    [x, ‖x‖², 1] · [-2y, 1, ‖y‖²] = ‖x - y‖²."""

    def __init__(self, table: np.ndarray, nodes: np.ndarray, device: torch.device, block_rows: int | None):
        self.span = Span(table, nodes, device, block_rows or PAIR_BLOCK)
        self.nodes = nodes  # vertex v is table row nodes[order[v]]
        self.n_nodes = len(nodes)
        self.order = np.arange(len(nodes))
        self.labels: np.ndarray | None = None
        self._left = None

    def sort_by_cluster(self, labels_by_position: np.ndarray) -> None:
        labels = labels_by_position[self.span.position(self.nodes)]
        self.order = np.argsort(labels, kind="stable")
        self.labels = labels[self.order]
        self._left = None

    def positions_of(self, rows: np.ndarray) -> np.ndarray:
        """Vertices of some table rows."""
        inverse = np.empty(self.n_nodes, dtype=np.int64)
        inverse[self.order] = np.arange(self.n_nodes)
        return inverse[np.searchsorted(self.nodes, rows)]

    def left(self):
        """[x, ‖x‖², 1] per vertex, float32, on the device (built once)."""
        if self._left is None:
            dim = self.span.table.shape[1]
            left = np.empty((self.n_nodes, dim + 2), dtype=np.float32)
            positions = self.span.position(self.nodes[self.order])
            for lo in range(0, self.n_nodes, self.span.block_rows):
                block = self.span.host_take(positions[lo:lo + self.span.block_rows])
                left[lo:lo + len(block), :dim] = block
                left[lo:lo + len(block), dim] = np.einsum("ij,ij->i", block, block)
            left[:, dim + 1] = 1.0
            self._left = to_device(left, self.span.device)
        return self._left

    def _right(self, lo: int, hi: int):
        """[-2y, 1, ‖y‖²]ᵀ of vertices lo..hi-1."""
        block = self.left()[lo:hi]
        right = block * -2.0 if isinstance(block, np.ndarray) else block.mul(-2.0)
        right[:, -2] = 1.0
        right[:, -1] = block[:, -2]
        return right.T

    def _bounds(self) -> list[tuple[int, int]]:
        step = self.span.block_rows
        return [(lo, min(lo + step, self.n_nodes)) for lo in range(0, self.n_nodes, step)]

    def pass_over_pairs(self, radius2: float, purity: bool):
        """Edges (a, b, d²) with a < b and d² < radius2 over all pairs of vertices, each pair computed
        once; with `purity`, also each vertex's squared distance to its nearest vertex of another cluster."""
        left, bounds = self.left(), self._bounds()
        nearest = np.full(self.n_nodes, np.inf, dtype=np.float64)
        found_a, found_b, found_d2 = [], [], []
        for i, (lo_i, hi_i) in enumerate(bounds):
            block_i = left[lo_i:hi_i]
            for lo_j, hi_j in bounds[i:]:
                d2 = block_i @ self._right(lo_j, hi_j)
                if purity:
                    self._update_nearest_other(d2, lo_i, hi_i, lo_j, hi_j, nearest)
                if radius2 > 0:
                    close = d2 < radius2
                    if lo_i == lo_j:
                        close = close.triu(1) if isinstance(close, torch.Tensor) else np.triu(close, 1)
                    flat, values = flat_where(close, d2)
                    if len(flat):
                        width = hi_j - lo_j
                        found_a.append(lo_i + flat // width)
                        found_b.append(lo_j + flat % width)
                        found_d2.append(values)
        edges = tuple(np.concatenate(part) if part else np.empty(0, dtype=dtype)
                      for part, dtype in ((found_a, np.int64), (found_b, np.int64), (found_d2, np.float32)))
        return edges, nearest

    def _runs(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """Runs of one cluster among vertices lo..hi-1, as offsets from lo."""
        return _runs_of(self.labels[lo:hi])

    def _update_nearest_other(self, d2, lo_i, hi_i, lo_j, hi_j, nearest: np.ndarray) -> None:
        """Lower `nearest` of the rows and columns of a block of squared distances by its entries
        between different clusters: whole rectangles between runs of one cluster each, so no per-pair
        mask is built."""
        for a_lo, a_hi, a_label in self._runs(lo_i, hi_i):
            for b_lo, b_hi, b_label in self._runs(lo_j, hi_j):
                if a_label == b_label:
                    continue
                part = d2[a_lo:a_hi, b_lo:b_hi]
                rows = lo_i + a_lo, lo_i + a_hi
                cols = lo_j + b_lo, lo_j + b_hi
                np.minimum(nearest[rows[0]:rows[1]], to_host(row_min(part)), out=nearest[rows[0]:rows[1]])
                np.minimum(nearest[cols[0]:cols[1]], to_host(row_min(part.T)), out=nearest[cols[0]:cols[1]])

    def nearest_other2(self, vertices: np.ndarray) -> np.ndarray:
        """Squared distance of some vertices (ascending) to their nearest vertex of another cluster."""
        left = self.left()
        queries = left[vertices] if isinstance(left, np.ndarray) else left[to_device(vertices, self.span.device)]
        nearest = np.full(len(vertices), np.inf, dtype=np.float64)
        query_runs = _runs_of(self.labels[vertices])
        for lo, hi in self._bounds():
            d2 = queries @ self._right(lo, hi)
            for a_lo, a_hi, a_label in query_runs:
                for b_lo, b_hi, b_label in self._runs(lo, hi):
                    if a_label != b_label:
                        view = nearest[a_lo:a_hi]
                        np.minimum(view, to_host(row_min(d2[a_lo:a_hi, b_lo:b_hi])), out=view)
        return nearest

    def greedy_cover(self, a: np.ndarray, b: np.ndarray, labelled: np.ndarray, candidates: np.ndarray, k: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Greedy max coverage on the graph with edges a–b (both directions) and self-loops."""
        n = self.n_nodes
        loops = np.arange(n, dtype=a.dtype)
        graph = scipy.sparse.coo_matrix((np.ones(2 * len(a) + n, dtype=np.int32),
                                         (np.concatenate([a, b, loops]), np.concatenate([b, a, loops]))),
                                        shape=(n, n)).tocsr()
        start, neighbours = graph.indptr, graph.indices

        def neighbours_of(vertices: np.ndarray) -> np.ndarray:
            lengths = start[vertices + 1] - start[vertices]
            offsets = np.repeat(start[vertices] - np.cumsum(lengths) + lengths, lengths)
            return neighbours[offsets + np.arange(lengths.sum())]

        covered = np.zeros(n, dtype=bool)
        covered[neighbours_of(labelled)] = True
        degree = graph @ (~covered).astype(np.int64)  # uncovered rows each vertex covers
        keys = self.nodes[self.order]  # table rows, for the tie rule
        score = np.full(n, -1, dtype=np.int64)
        score[candidates] = degree[candidates]
        rows, scores = np.empty(k, dtype=np.int64), np.empty(k, dtype=np.float64)
        for i in range(k):
            pick = best(score, keys, seed)
            rows[i], scores[i] = keys[pick], score[pick]
            fresh = neighbours_of(np.array([pick]))
            fresh = fresh[~covered[fresh]]
            covered[fresh] = True
            lost = np.bincount(neighbours_of(fresh), minlength=n)  # a fresh row no longer counts for its neighbours
            score -= np.where(score >= 0, lost, 0)
            score[pick] = -1
        return rows, scores
