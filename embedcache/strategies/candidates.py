"""SEALS candidate pools (Coleman, Chou, Katz-Samuels, Culatana, Bailis, Berg, Nowak, Sumbaly, Zaharia &
Yalniz, "Similarity Search for Efficient Active Learning and Search of Rare Concepts", AAAI 2022).

On a very large pool, scoring every row each round costs the most. SEALS scores only the unlabelled
rows among the K nearest neighbours of the labelled rows (K = 100 in the paper), and grows that
candidate set as labels arrive: a new labelled row adds its own K neighbours. Any strategy then runs
on `candidates()` instead of the whole pool.

The paper searches an approximate (HNSW) index; here the index is FAISS's exact flat index over the
pool rows, built once (a float32 copy of the pool: the only memory that grows with the pool besides
the candidate set), searched by faiss-gpu when the device is CUDA and faiss-gpu sees a GPU.
"""

from __future__ import annotations

import numpy as np
import torch

from embedcache.errors import ConfigError
from embedcache.strategies._common import (Span, check_positive_int, check_rows, check_table, default_block_rows,
                                           device_of, faiss_gpu, faiss_module, gpu_resources)

#: The paper's K.
N_NEIGHBORS = 100
METRICS = ("l2", "cosine")


class KnnCandidates:
    """The unlabelled rows among the K nearest pool rows of every labelled row, grown as labels arrive.

    embeddings: the table [N, D]; pool: the table rows that may become candidates (labelled rows may be
    among them). `add_labelled(rows)` searches the new labelled rows' neighbours; `candidates()` is the
    current set, ascending, without labelled rows. The same calls in the same order give the same set.
    """

    def __init__(self, embeddings: np.ndarray, pool: np.ndarray, n_neighbors: int = N_NEIGHBORS, *,
                 metric: str = "l2", device: str | torch.device = "cpu", block_rows: int | None = None):
        self.table = check_table(embeddings)
        self.pool = check_rows(pool, len(self.table), "pool")
        self.n_neighbors = check_positive_int(n_neighbors, "n_neighbors")
        if metric not in METRICS:
            raise ConfigError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        self.metric = metric
        self.device = device_of(device)
        self.block_rows = block_rows or default_block_rows(self.table.shape[1])
        faiss = faiss_module()
        index = faiss.IndexFlatIP(self.table.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(self.table.shape[1])
        span = Span(self.table, self.pool, torch.device("cpu"), self.block_rows)
        members = np.flatnonzero(span.member)
        for lo in range(0, len(members), self.block_rows):
            index.add(self._prepare(span.host_take(members[lo:lo + self.block_rows])))
        if faiss_gpu(self.device):
            index = faiss.index_cpu_to_gpu(gpu_resources(), self.device.index or 0, index)
        self.index = index
        self._found = np.zeros(len(self.pool), dtype=bool)  # pool positions among someone's neighbours
        self._labelled = np.zeros(len(self.pool), dtype=bool)
        self._searched = np.empty(0, dtype=np.int64)  # table rows whose neighbours were added

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
        if self.metric == "cosine":
            faiss_module().normalize_L2(vectors)
        return vectors

    def add_labelled(self, rows: np.ndarray) -> None:
        """Mark rows as labelled (rows outside the pool are allowed) and add the K nearest pool rows of
        each row not added before (the row itself excluded)."""
        rows = check_rows(rows, len(self.table), "rows")
        own = np.searchsorted(self.pool, rows)
        in_pool = own < len(self.pool)
        in_pool[in_pool] = self.pool[own[in_pool]] == rows[in_pool]
        own = np.where(in_pool, own, -1)
        self._labelled[own[in_pool]] = True
        fresh = ~np.isin(rows, self._searched)
        self._searched = np.union1d(self._searched, rows)
        rows, own = rows[fresh], own[fresh]
        k = min(self.n_neighbors + 1, len(self.pool))
        for lo in range(0, len(rows), self.block_rows):
            _, neighbours = self.index.search(self._prepare(self.table[rows[lo:lo + self.block_rows]]), k)
            is_self = neighbours == own[lo:lo + self.block_rows, None]
            keep = ~is_self & (neighbours >= 0)
            if k > self.n_neighbors:  # without itself among them, the K nearest are the first K
                keep[~is_self.any(axis=1), -1] = False
            self._found[neighbours[keep]] = True

    def candidates(self) -> np.ndarray:
        """Unlabelled pool rows among the labelled rows' neighbours, ascending."""
        return self.pool[self._found & ~self._labelled]
