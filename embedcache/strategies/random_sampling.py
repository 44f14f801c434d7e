"""Random sampling: the paper's baseline."""

from __future__ import annotations

import numpy as np

from embedcache.scoring import tie_priority, top_k
from embedcache.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("random")
class RandomStrategy(Strategy):
    """Uniformly random, asking nothing of the learner. Scores are seeded uniform draws in [0, 1) per row."""

    name = "random"

    def select(self, learner, candidates, labeled, k, seed):
        candidates = np.asarray(candidates, dtype=np.int64)
        scores = tie_priority(candidates, seed ^ 0x5EED).astype(np.float64) / 2.0**64
        return top_k(scores, candidates, k, seed)
