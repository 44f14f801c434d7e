"""Core-set: greedy k-center on embeddings (Sener & Savarese, "Active Learning for Convolutional Neural
Networks: A Core-Set Approach", ICLR 2018).

Each pick is the candidate farthest (Euclidean) from every labelled row and every row picked before
it, which greedily minimises the largest distance from a pool row to its nearest labelled row (the
paper's k-center objective; its robust MIP refinement is not part of this). The paper runs it on the
network's penultimate features; a linear head's input is the cached vector itself.

Memory and time: the squared distance of each candidate to its nearest labelled row is computed once,
block by block (one float per row is kept). Picks only lower these distances, so the kept values are
upper bounds, and each pick re-evaluates (against the rows picked so far) only the candidates whose
bound could still be the largest (lazy greedy, as in CELF): the pool is read once, not once per pick,
and the result is the exact greedy choice.
"""

from __future__ import annotations

import numpy as np
import torch

from embedcache.strategies._common import (Span, best, check_disjoint, check_k, check_rows, check_table,
                                           device_of, one_thread, row_min, row_norms2, to_device,
                                           to_host)

#: Labelled rows compared with a block at once when computing the distances to the labelled set.
_LABELLED_CHUNK = 1024
#: Candidates re-evaluated first at each pick; the number grows fourfold while it is not enough.
_FIRST_PROBE = 64


def kcenter_greedy(embeddings: np.ndarray, candidates: np.ndarray, labelled: np.ndarray, k: int, seed: int, *,
                   device: str | torch.device = "cpu", block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center: k candidate rows, each the farthest from the labelled rows and the earlier picks.

    embeddings: the table [N, D]; candidates, labelled: disjoint table rows. Returns (rows, scores) in
    the order picked; a score is the pick's Euclidean distance to its nearest labelled-or-picked row at
    the time (inf for the first pick when nothing is labelled). Equal distances go to the row with the
    lowest `scoring.tie_priority(row, seed)`; the seed does nothing else.
    """
    table = check_table(embeddings)
    candidates = check_rows(candidates, len(table), "candidates")
    labelled = check_rows(labelled, len(table), "labelled")
    check_disjoint(candidates, labelled, len(table))
    k = check_k(k, len(candidates))
    span = Span(table, candidates, device_of(device), block_rows)
    to_labelled = _nearest_labelled(span, table, labelled)
    to_labelled[~span.member] = -np.inf
    bound = to_labelled.copy()  # squared distance to the nearest labelled or picked row, or an upper bound of it
    picked: list[int] = []
    rows, scores = np.empty(k, dtype=np.int64), np.empty(k, dtype=np.float64)
    with one_thread():  # the re-evaluations are thin products
        for i in range(k):
            probe = _FIRST_PROBE
            while True:
                # every candidate outside `probe_set` has a bound below `threshold`, so below the best exact value
                threshold = np.partition(bound, len(bound) - probe)[len(bound) - probe] \
                    if probe < len(bound) else -np.inf
                probe_set = np.flatnonzero(bound >= threshold)
                if picked:
                    bound[probe_set] = _exact(span, probe_set, picked, to_labelled[probe_set])
                if bound[probe_set].max() >= threshold:
                    break
                probe *= 4
            pick = probe_set[best(bound[probe_set], span.span[probe_set], seed)]
            rows[i], scores[i] = span.span[pick], np.sqrt(max(float(bound[pick]), 0.0))
            bound[pick] = to_labelled[pick] = -np.inf
            picked.append(int(pick))
    return rows, scores


def _nearest_labelled(span: Span, table: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """Squared distance of every span position to its nearest labelled row (inf when none), float64."""
    nearest = np.full(len(span), np.inf, dtype=np.float64)
    norms = span.squared_norms()
    for start in range(0, len(labelled), _LABELLED_CHUNK):
        centers = np.ascontiguousarray(table[labelled[start:start + _LABELLED_CHUNK]], dtype=np.float32)
        scaled = to_device(-2.0 * centers, span.device)
        center_norms = to_device(np.einsum("ij,ij->i", centers, centers), span.device)
        for lo, hi, block in span.blocks():
            # min_j ‖x - c_j‖² = ‖x‖² + min_j (‖c_j‖² - 2 x·c_j)
            partial = block @ scaled.T
            partial += center_norms[None, :]
            np.minimum(nearest[lo:hi], to_host(row_min(partial)) + norms[lo:hi], out=nearest[lo:hi])
    return nearest


def _exact(span: Span, positions: np.ndarray, picked: list[int], to_labelled: np.ndarray) -> np.ndarray:
    """Squared distance of some positions to their nearest labelled or picked row (gathered a block at a time)."""
    centers = span.take(np.asarray(picked))
    scaled, center_norms = -2.0 * centers, row_norms2(centers)
    exact = np.empty(len(positions), dtype=np.float64)
    for lo in range(0, len(positions), span.block_rows):
        x = span.take(positions[lo:lo + span.block_rows])
        partial = x @ scaled.T
        partial += center_norms[None, :]
        exact[lo:lo + len(x)] = to_host(row_min(partial) + row_norms2(x))
    return np.minimum(to_labelled, exact)
