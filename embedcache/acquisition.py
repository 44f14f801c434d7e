"""Acquisition: which unlabelled examples to label next.

Scores are "higher = acquire first". Uncertainty strategies score class probabilities `[n, C]`:
least-confidence `1 - max p`, entropy `-Σ p log p`, margin `-(p1 - p2)`. Random draws a seeded
uniform score. Selection takes the top-k; ties are broken by a per-row priority hashed from
(row index, seed), which does not depend on how the pool is chunked or which backend scored it,
so the fused scorers in `embedcache.kernels` reproduce the same order.

A strategy sees the learner, so strategies that need embeddings or gradients (BADGE, core-set,
TypiClust) fit the same `select` interface without changes to the loop.
"""

from __future__ import annotations

import abc
from typing import Callable

import numpy as np

from embedcache.registry import Registry

STRATEGIES: Registry["Strategy"] = Registry("strategy")

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


# ---------------------------------------------------------------------- score formulas on probabilities
# Each formula gives a row the same bits whatever the array's layout (C or F order) and however many
# rows are scored together: sums run over the classes left to right, and the other steps are exact
# (max, comparisons) or element-wise. The fused scorer in `embedcache.kernels` relies on this.
def row_sum(values: np.ndarray) -> np.ndarray:
    """Σ over the columns of each row, added left to right."""
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


UNCERTAINTY_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "least-confidence": least_confidence,
    "entropy": entropy,
    "margin": margin,
}


# ---------------------------------------------------------------------- strategies
class Strategy(abc.ABC):
    """Picks the next examples to label from the unlabelled candidates."""

    name: str

    @abc.abstractmethod
    def select(self, learner, candidates: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the k chosen candidates, best first. `learner` is fitted on the labelled set."""


class UncertaintyStrategy(Strategy):
    """Scores the learner's class probabilities with one of `UNCERTAINTY_SCORES`.

    A learner that can rank a pool without materialising probabilities (the linear learner through
    `embedcache.kernels`) offers `top_k(candidates, strategy, k, seed)`; it must return exactly
    what the probability path would.
    """

    def __init__(self, name: str):
        self.name = name
        self.score = UNCERTAINTY_SCORES[name]

    def select(self, learner, candidates, k, seed):
        fused = getattr(learner, "top_k", None)
        if fused is not None:
            return fused(candidates, self.name, k, seed)
        return top_k(self.score(learner.predict_proba(candidates)), candidates, k, seed)


class RandomStrategy(Strategy):
    """Uniformly random: the paper's baseline. Scores are the seeded uniform draws in [0, 1)."""

    name = "random"

    def select(self, learner, candidates, k, seed):
        candidates = np.asarray(candidates, dtype=np.int64)
        scores = tie_priority(candidates, seed ^ 0x5EED).astype(np.float64) / 2.0**64
        return top_k(scores, candidates, k, seed)


for _name in UNCERTAINTY_SCORES:
    STRATEGIES.register(_name)(lambda name=_name: UncertaintyStrategy(name))
STRATEGIES.register("random")(RandomStrategy)


def create_strategy(name: str) -> Strategy:
    """The strategy registered under `name` (random, least-confidence, entropy, margin, ...)."""
    return STRATEGIES.get(name)()
