"""Evaluate with one learner, rank the pool with another: how much does the cheap mode lose?

`HybridLearner(evaluator, scorer)` fits both every round. Evaluation (`predict_proba`) asks the
evaluator; the strategies rank with `ranker`, which is the scorer. So `--mode finetune --score-with
linear` records finetuned accuracy on examples a linear head on cached embeddings chose, and `--mode
linear --score-with finetune` the reverse.
"""

from __future__ import annotations

import numpy as np

from embedcache.learners.base import BaseLearner, Learner, register_learner


@register_learner("hybrid")
class HybridLearner(BaseLearner):
    """Both learners must index the same rows (the loop's dataset rows). `linear_features`: the
    fingerprint of the cache a linear side reads, recorded so a record is never resumed with another."""

    warm_start = False  # a finetune side would make replaying earlier fits on resume cost whole rounds

    def __init__(self, evaluator: Learner, scorer: Learner, linear_features: str | None = None):
        self.evaluator, self.scorer = evaluator, scorer
        self.linear_features = linear_features

    def describe(self) -> dict:
        """Both learners' configs, and the fingerprint of the linear side's cache (part of a run's identity)."""
        return {"learner": "hybrid", "evaluate_with": self.evaluator.describe(), "score_with": self.scorer.describe(),
                "linear_features": self.linear_features}

    def prepare(self, pool: np.ndarray, evaluation: dict[str, np.ndarray]) -> None:
        for learner in (self.evaluator, self.scorer):
            learner.prepare(pool, evaluation)

    def fit(self, rows: np.ndarray, y: np.ndarray) -> "HybridLearner":
        self.evaluator.fit(rows, y)
        self.scorer.fit(rows, y)
        self.training_ = {**self.evaluator.training_, "scorer": dict(self.scorer.training_)}
        return self

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return self.evaluator.predict_proba(rows)

    @property
    def ranker(self) -> Learner:
        """The scorer (or whatever it ranks with): the strategies see its capabilities, not the evaluator's."""
        return self.scorer.ranker
