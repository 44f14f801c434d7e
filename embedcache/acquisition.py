"""Acquisition: which unlabelled examples to label next.

Scores are "higher = acquire first". Uncertainty strategies score class probabilities with the
formulas of `embedcache.scoring`; random draws a seeded uniform score. Selection takes the top-k,
ties broken by `scoring.tie_priority` (a hash of row and seed).

A strategy sees the learner, so strategies that need embeddings or gradients (BADGE, core-set,
TypiClust) fit the same `select` interface without changes to the loop.
"""

from __future__ import annotations

import abc

import numpy as np

from embedcache.registry import Registry
from embedcache.scoring import PROBABILITY_SCORES, tie_priority, top_k

STRATEGIES: Registry["Strategy"] = Registry("strategy")


# ---------------------------------------------------------------------- strategies
class Strategy(abc.ABC):
    """Picks the next examples to label from the unlabelled candidates."""

    name: str

    @abc.abstractmethod
    def select(self, learner, candidates: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the k chosen candidates, best first. `learner` is fitted on the labelled set."""


class UncertaintyStrategy(Strategy):
    """Scores the learner's class probabilities with one of `scoring.PROBABILITY_SCORES`.

    A learner that can rank a pool without materialising probabilities (the linear learner through
    `embedcache.kernels`) offers `top_k(candidates, strategy, k, seed)`; it must return what the
    probability path would, up to ties (the determinism contract of `embedcache.scoring`).
    """

    def __init__(self, name: str):
        self.name = name
        self.score = PROBABILITY_SCORES[name]

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


for _name in PROBABILITY_SCORES:
    STRATEGIES.register(_name)(lambda name=_name: UncertaintyStrategy(name))
STRATEGIES.register("random")(RandomStrategy)


def create_strategy(name: str) -> Strategy:
    """The strategy registered under `name` (random, least-confidence, entropy, margin, ...)."""
    return STRATEGIES.get(name)()
