"""Score formulas, the tie rule and top-k: the leaf every part that ranks examples uses (strategies,
learners, the fused scorer in `embedcache.kernels`).

Scores are "higher = acquire first". The uncertainty formulas read class probabilities `[n, C]`:
least-confidence `1 - max p`, entropy `-Σ p log p`, margin `-(p1 - p2)`; max-logit `-max logit`
reads logits. `top_k` keeps the k best; equal scores are ordered by `tie_priority`, a hash of
(row, seed), so ties never depend on the order candidates come in.

Determinism contract (kernels/README.md has the full text): the same code path on the same pool,
on one machine, gives the same scores bit for bit and so the same acquisitions, resumed or not,
in one process or several. Across BLAS kernels, chunk sizes and backends (CPU vs GPU), scores
agree within `SCORE_ATOL + SCORE_RTOL·|score|`, so top-k lists agree *up to ties*: only rows
whose scores lie within that tolerance of each other may trade places. `topk_disagreement`
checks two top-k lists against that promise.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

#: Tolerance of the up-to-ties promise, on float32 scores.
SCORE_ATOL = 1e-5
SCORE_RTOL = 1e-5

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def tie_priority(rows: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per row from (row, seed) (splitmix64): the tie-break order, lower first."""
    with np.errstate(over="ignore"):
        z = np.asarray(rows, dtype=np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def top_k(scores: np.ndarray, rows: np.ndarray, k: int, seed: int,
          keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k rows with the highest scores, best first; equal scores ordered by `tie_priority`.

    `keys` (aligned with rows) is what the tie rule hashes, when the rows are positions in a block
    of a larger table (default: the rows themselves). Returns (rows, scores). k larger than the
    number of rows returns them all.
    """
    scores = np.asarray(scores)
    rows = np.asarray(rows, dtype=np.int64)
    keys = rows if keys is None else np.asarray(keys, dtype=np.int64)
    k = min(int(k), len(rows))
    if k <= 0:
        return rows[:0], scores[:0]
    if k < len(rows):
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = np.flatnonzero(scores >= threshold)  # every row tied at the threshold competes
        scores, rows, keys = scores[keep], rows[keep], keys[keep]
    order = np.lexsort((tie_priority(keys, seed), -scores))[:k]
    return rows[order], scores[order]


def score_tolerance(scores: np.ndarray) -> np.ndarray:
    """How far two backends' scores of one row may be apart under the determinism contract."""
    return SCORE_ATOL + SCORE_RTOL * np.abs(np.asarray(scores, dtype=np.float64))


def topk_disagreement(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> str | None:
    """Why two top-k results (rows, scores) of the same pool break the up-to-ties promise, or None.

    They agree when they have the same length, the i-th best scores agree within the tolerance,
    a row chosen by both has the same score on both sides within the tolerance, and a row chosen
    by one side only scores within twice the tolerance of the cut (the other side's last score):
    a near-tie at the boundary.
    """
    (rows_a, scores_a), (rows_b, scores_b) = a, b
    rows_a, rows_b = np.asarray(rows_a), np.asarray(rows_b)
    scores_a, scores_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    if len(rows_a) != len(rows_b):
        return f"{len(rows_a)} rows vs {len(rows_b)}"
    if not len(rows_a):
        return None
    gap = np.abs(scores_a - scores_b) - score_tolerance(np.maximum(np.abs(scores_a), np.abs(scores_b)))
    if (gap > 0).any():
        i = int(np.argmax(gap))
        return f"the {i + 1}-th best scores differ: {scores_a[i]!r} vs {scores_b[i]!r}"
    where_b = {int(r): s for r, s in zip(rows_b, scores_b)}
    for row, score in zip(rows_a.tolist(), scores_a):
        if row in where_b and abs(score - where_b[row]) > score_tolerance(score):
            return f"row {row} scores {score!r} vs {where_b[row]!r}"
    for mine, mine_scores, theirs, cut in ((rows_a, scores_a, set(rows_b.tolist()), scores_b[-1]),
                                           (rows_b, scores_b, set(rows_a.tolist()), scores_a[-1])):
        for row, score in zip(mine.tolist(), mine_scores):
            if row not in theirs and abs(score - cut) > 2 * score_tolerance(cut):
                return f"row {row} (score {score!r}) is chosen by one side only, but is no near-tie of the cut {cut!r}"
    return None


# ---------------------------------------------------------------------- score formulas
def row_sum(values: np.ndarray) -> np.ndarray:
    """Σ over the columns of each row, added column by column: fast on the class-major arrays the
    scorer works on, where each column is contiguous."""
    total = values[:, 0].copy()
    for c in range(1, values.shape[1]):
        total += values[:, c]
    return total


def least_confidence(proba: np.ndarray) -> np.ndarray:
    """1 - max_c p_c."""
    return 1.0 - proba.max(axis=1)


def entropy(proba: np.ndarray) -> np.ndarray:
    """-Σ_c p_c log p_c, with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = proba * np.log(proba)
    return -row_sum(np.where(proba > 0, terms, 0.0))


def margin(proba: np.ndarray) -> np.ndarray:
    """-(p_(1) - p_(2)): a small gap between the two most likely classes scores high."""
    if proba.shape[1] < 2:
        return np.zeros(len(proba), dtype=proba.dtype)
    top = proba.max(axis=1)
    is_top = proba == top[:, None]
    second = np.where(is_top, -np.inf, proba).max(axis=1)
    second = np.where(is_top.sum(axis=1) > 1, top, second)  # the top value twice: p_(2) = p_(1)
    return -(top - second)


def max_logit(logits: np.ndarray) -> np.ndarray:
    """-max_c logit_c: a low top logit is uncertain (reads logits, not probabilities)."""
    return -logits.max(axis=1)


#: Scores of class probabilities [n, C], by strategy name.
PROBABILITY_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "least-confidence": least_confidence,
    "entropy": entropy,
    "margin": margin,
}
#: Scores of logits [n, C], by strategy name.
LOGIT_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"max-logit": max_logit}
#: Every uncertainty score a linear head's output can be ranked by: the one table that strategies,
#: learners and the fused scorer share.
UNCERTAINTY_SCORES = (*PROBABILITY_SCORES, *LOGIT_SCORES)
