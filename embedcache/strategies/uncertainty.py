"""Uncertainty sampling: the learner's outputs scored by one formula of `embedcache.scoring`, top-k.

One strategy per name in `scoring.UNCERTAINTY_SCORES` (least-confidence, entropy, margin on class
probabilities; max-logit on logits), so `al --strategy` and the fused scorer accept the same names.
"""

from __future__ import annotations

from embedcache.learners.base import Capability, RanksPool
from embedcache.scoring import LOGIT_SCORES, PROBABILITY_SCORES, UNCERTAINTY_SCORES, top_k
from embedcache.strategies.base import STRATEGIES, Strategy


class UncertaintyStrategy(Strategy):
    """Scores class probabilities (or logits, for a logit score) and takes the top k: the one dispatcher.

    A learner that ranks a pool fused (the linear learner through `embedcache.kernels`) is asked for its
    `top_k`, which returns what the unfused path would, up to ties (the determinism contract of
    `embedcache.scoring`); any other learner's `predict_proba` / `predict_logits` is scored here.
    """

    def __init__(self, name: str):
        self.name = name
        self.reads_logits = name in LOGIT_SCORES
        self.score = LOGIT_SCORES[name] if self.reads_logits else PROBABILITY_SCORES[name]
        self.requires = frozenset({Capability.LOGITS if self.reads_logits else Capability.PROBA})

    def select(self, learner, candidates, labeled, k, seed):
        if isinstance(learner, RanksPool):
            return learner.top_k(candidates, self.name, k, seed)
        outputs = learner.predict_logits(candidates) if self.reads_logits else learner.predict_proba(candidates)
        return top_k(self.score(outputs), candidates, k, seed)


for _name in UNCERTAINTY_SCORES:
    STRATEGIES.register(_name)(lambda name=_name: UncertaintyStrategy(name))
