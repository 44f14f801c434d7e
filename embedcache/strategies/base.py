"""What a strategy is, and the registry `al --strategy` names it in.

A strategy picks the next examples to label from the unlabelled candidates, given the learner that
ranks the pool (`learner.ranker`, fitted on the labelled set) and the rows labelled so far (what
diversity strategies measure distances to), and declares the learner capabilities it needs
(`requires`, see `embedcache.learners.base`). The loop checks `requires` against that
learner while a run is planned, so a strategy only ever sees a learner that offers what it asks for.
"""

from __future__ import annotations

import abc
from typing import Callable

import numpy as np

from embedcache.learners.base import Capability, Learner
from embedcache.registry import Registry


class Strategy(abc.ABC):
    """Picks the next examples to label. `requires`: the capabilities `select` uses of the learner."""

    name: str
    requires: frozenset[Capability] = frozenset()

    @abc.abstractmethod
    def select(self, learner: Learner, candidates: np.ndarray, labeled: np.ndarray, k: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the k chosen `candidates`, first choice first (all of them when k exceeds their
        number). `labeled`: the rows the learner was fitted on. Every random choice comes from `seed`, and
        the order candidates come in does not matter."""


STRATEGIES: Registry[Callable[[], Strategy]] = Registry("strategy")


def create_strategy(name: str) -> Strategy:
    """The strategy registered under `name` (random, least-confidence, entropy, margin, max-logit, ...)."""
    return STRATEGIES.get(name)()
