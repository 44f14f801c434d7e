"""SEALS candidate pools (Coleman, Chou, Katz-Samuels, Culatana, Bailis, Berg, Nowak, Sumbaly, Zaharia &
Yalniz, "Similarity Search for Efficient Active Learning and Search of Rare Concepts", AAAI 2022).

On a very large pool, scoring every row each round costs the most. SEALS scores only the unlabelled
rows among the K nearest neighbours of the labelled rows (K = 100 in the paper), and grows that
candidate set as labels arrive: a new labelled row adds its own K neighbours. Any strategy then runs
on `candidates()` instead of the whole pool.

The paper searches an approximate (HNSW) index. Here the search is exact and needs no index: the
few rows labelled per round are compared with the pool block by block (views of the table, one
matrix product per block, a running top K), which is 4x faster than FAISS's flat index for a few
hundred queries on the 2-core benchmark machine (200 queries on 200,000 rows: 8-13 s in FAISS, whose
matrix products are split into tiles too thin for that shape) and keeps no copy of the pool.
"""

from __future__ import annotations

import numpy as np
import torch

from embedcache.errors import ConfigError
from embedcache.strategies._common import (Span, check_positive_int, check_rows, check_table, device_of, to_device,
                                           to_host)

#: The paper's K.
N_NEIGHBORS = 100
#: Labelled rows searched together (their scores against a block: 512 × 16,384 float32 = 32 MiB).
_QUERY_CHUNK = 512
METRICS = ("l2", "cosine")


class KnnCandidates:
    """The unlabelled rows among the K nearest pool rows of every labelled row, grown as labels arrive.

    embeddings: the table [N, D]; pool: the table rows that may become candidates (labelled rows may be
    among them). `add_labelled(rows)` searches the new labelled rows' neighbours; `candidates()` is the
    current set, ascending, without labelled rows. metric: "l2" (Euclidean) or "cosine". Neighbours at
    equal distance on the K-th place are kept or dropped by a deterministic partial sort.
    """

    def __init__(self, embeddings: np.ndarray, pool: np.ndarray, n_neighbors: int = N_NEIGHBORS, *,
                 metric: str = "l2", device: str | torch.device = "cpu", block_rows: int | None = None):
        self.table = check_table(embeddings)
        pool = check_rows(pool, len(self.table), "pool")
        self.n_neighbors = check_positive_int(n_neighbors, "n_neighbors")
        if metric not in METRICS:
            raise ConfigError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        self.metric = metric
        self.span = Span(self.table, pool, device_of(device), block_rows)
        norms = self.span.squared_norms()
        if metric == "cosine":  # rank by -cos = -(q / |q|) · x / |x|
            self._column_term = np.zeros(len(self.span), dtype=np.float32)
            self._column_scale = (1.0 / np.sqrt(np.maximum(norms, 1e-30))).astype(np.float32)
        else:  # rank by |x|² - 2 q · x, |q|² being the same for every x
            self._column_term, self._column_scale = norms, None
        self._column_term[~self.span.member] = np.inf  # rows of the stretch that are not in the pool
        self._found = np.zeros(len(self.span), dtype=bool)  # span positions among someone's neighbours
        self._labelled = np.zeros(len(self.span), dtype=bool)
        self._searched = np.empty(0, dtype=np.int64)  # table rows whose neighbours were added

    def add_labelled(self, rows: np.ndarray) -> None:
        """Mark rows as labelled (rows outside the pool are allowed) and add the K nearest pool rows of
        each row not added before (the row itself excluded)."""
        rows = check_rows(rows, len(self.table), "rows")
        position = np.full(len(rows), -1, dtype=np.int64)  # span position of rows in the pool
        if len(self.span):
            inside = np.flatnonzero((rows >= self.span.span[0]) & (rows <= self.span.span[-1]))
            at = self.span.position(rows[inside])
            hit = (self.span.span[at] == rows[inside]) & self.span.member[at]
            position[inside[hit]] = at[hit]
        self._labelled[position[position >= 0]] = True
        fresh = ~np.isin(rows, self._searched)
        self._searched = np.union1d(self._searched, rows)
        rows, position = rows[fresh], position[fresh]
        for lo in range(0, len(rows), _QUERY_CHUNK):
            self._found[self._nearest(rows[lo:lo + _QUERY_CHUNK], position[lo:lo + _QUERY_CHUNK])] = True

    def _nearest(self, queries: np.ndarray, own: np.ndarray) -> np.ndarray:
        """Span positions of the queries' K nearest pool rows other than themselves (all queries together)."""
        x = np.ascontiguousarray(self.table[queries], dtype=np.float32)
        if self.metric == "cosine":
            x /= np.sqrt(np.maximum(np.einsum("ij,ij->i", x, x), 1e-30))[:, None]
        x_device = to_device(x * (-1.0 if self.metric == "cosine" else -2.0), self.span.device)
        best_score = np.empty((len(queries), 0), dtype=np.float32)
        best_position = np.empty((len(queries), 0), dtype=np.int64)
        mine_rows = np.arange(len(queries))
        for lo, hi, block in self.span.blocks():
            score = to_host(x_device @ block.T)
            if self._column_scale is not None:
                score *= self._column_scale[lo:hi]
            score += self._column_term[lo:hi]
            mine = (own >= lo) & (own < hi)
            score[mine_rows[mine], own[mine] - lo] = np.inf  # not its own neighbour
            previous = best_score.shape[1]
            score = np.concatenate([best_score, score], axis=1)
            k = min(self.n_neighbors, score.shape[1])
            keep = np.argpartition(score, k - 1, axis=1)[:, :k]
            best_score = np.take_along_axis(score, keep, axis=1)
            earlier = np.take_along_axis(best_position, np.minimum(keep, max(previous - 1, 0)), axis=1) \
                if previous else 0
            best_position = np.where(keep < previous, earlier, lo + keep - previous)
        return best_position[np.isfinite(best_score)]

    def candidates(self) -> np.ndarray:
        """Unlabelled pool rows among the labelled rows' neighbours, ascending."""
        return self.span.span[self._found & self.span.member & ~self._labelled]
