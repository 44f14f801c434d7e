"""Acquisition: formulas against hand-computed values, the tie rule, the uncertainty dispatcher and what
each strategy requires (every registered strategy's conformance check runs in test_conformance.py)."""

from __future__ import annotations

import numpy as np
import pytest

from embedcache.learners import Capability
from embedcache.strategies import STRATEGIES, create_strategy
from embedcache.errors import ConfigError
from embedcache.scoring import (LOGIT_SCORES, PROBABILITY_SCORES, UNCERTAINTY_SCORES, entropy, least_confidence, margin,
                                tie_priority, top_k, topk_disagreement)
from embedcache.testing import reference_learner

#: Rows labelled before the candidates are scored.
LABELED = np.arange(20)
P = np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])


def test_formulas_by_hand():
    np.testing.assert_allclose(least_confidence(P), [0.5, 0.1, 0.5, 0.0])
    np.testing.assert_allclose(entropy(P), [np.log(2), -(0.9 * np.log(0.9) + 0.1 * np.log(0.05)),
                                            -(0.2 * np.log(0.2) + 0.3 * np.log(0.3) + 0.5 * np.log(0.5)), 0.0])
    np.testing.assert_allclose(margin(P), [0.0, -0.85, -0.2, -1.0])


def test_binary_strategies_rank_alike():
    """For two classes least-confidence, entropy and margin are monotone in each other (paper, footnote 2)."""
    p1 = np.random.default_rng(0).random(50)
    proba = np.stack([1 - p1, p1], axis=1)
    orders = [np.argsort(-f(proba), kind="stable") for f in (least_confidence, entropy, margin)]
    assert all(np.array_equal(orders[0], o) for o in orders[1:])


def test_top_k_breaks_ties_by_seeded_priority():
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1])
    rows = np.array([10, 11, 12, 13, 14])
    picked, picked_scores = top_k(scores, rows, 3, seed=7)
    assert picked[0] == 11 and set(picked[1:]) <= {10, 12, 13} and list(picked_scores) == [0.9, 0.5, 0.5]
    tied = np.array([10, 12, 13])
    expected = tied[np.argsort(tie_priority(tied, 7))][:2]
    assert list(picked[1:]) == list(expected)
    assert [list(top_k(scores, rows, 3, seed=s)[0]) for s in range(20)].count(list(picked)) < 20  # seed matters
    assert list(top_k(scores, rows, 3, seed=7)[0]) == list(picked)  # and is deterministic
    assert len(top_k(scores, rows, 99, seed=0)[0]) == 5 and len(top_k(scores, rows, 0, seed=0)[0]) == 0


def test_tie_priority_does_not_depend_on_chunking():
    rows = np.arange(1000)
    whole = tie_priority(rows, 3)
    assert np.array_equal(np.concatenate([tie_priority(rows[:400], 3), tie_priority(rows[400:], 3)]), whole)
    assert len(np.unique(whole)) == 1000 and not np.array_equal(whole, tie_priority(rows, 4))


@pytest.mark.parametrize("name", UNCERTAINTY_SCORES)
def test_uncertainty_strategies_rank_best_first_by_their_formula(name):
    """With or without the learner's fused ranking, the same picks, best first, led by the highest score."""
    strategy = create_strategy(name)
    candidates = np.sort(np.random.default_rng(2).choice(np.arange(20, 500), 200, replace=False))
    unfused = reference_learner(strategy.requires)
    fused = reference_learner(strategy.requires | {Capability.FUSED_RANKING})
    rows, scores = strategy.select(unfused, candidates, LABELED, 17, seed=5)
    assert np.all(np.diff(scores) <= 0), "best first"
    outputs = unfused.predict_logits(candidates) if name in LOGIT_SCORES else unfused.predict_proba(candidates)
    assert np.isclose(scores[0], strategy.score(outputs).max())
    fused_rows, fused_scores = strategy.select(fused, candidates, LABELED, 17, seed=5)
    assert np.array_equal(rows, fused_rows) and np.array_equal(scores, fused_scores)


def test_each_strategy_requires_what_it_reads():
    assert create_strategy("random").requires == frozenset()
    assert create_strategy("max-logit").requires == {Capability.LOGITS}
    assert all(create_strategy(name).requires == {Capability.PROBA} for name in PROBABILITY_SCORES)
    assert set(UNCERTAINTY_SCORES) <= set(STRATEGIES.names())  # the one table of embedcache.scoring


def test_the_dispatcher_asks_a_learner_that_ranks_fused_for_its_top_k():
    class Counting(type(reference_learner(frozenset({Capability.FUSED_RANKING})))):
        calls = 0

        def top_k(self, candidates, strategy, k, seed):
            Counting.calls += 1
            return super().top_k(candidates, strategy, k, seed)

        def predict_proba(self, rows):
            raise AssertionError("the fused path must not materialise probabilities")

    create_strategy("entropy").select(Counting(500, 3, 8, 1), np.arange(100, 200), LABELED, 5, 0)
    assert Counting.calls == 1


def test_unknown_strategy_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown strategy 'least-confident'.*Did you mean least-confidence"):
        create_strategy("least-confident")


def test_topk_disagreement_allows_only_near_ties():
    rows, scores = np.array([4, 7, 9]), np.array([0.9, 0.5, 0.4], dtype=np.float32)
    assert topk_disagreement((rows, scores), (rows, scores)) is None
    near = np.array([0.9, 0.5, 0.4 + 4e-6], dtype=np.float32)
    assert topk_disagreement((rows, scores), (np.array([4, 7, 2]), near)) is None  # a near-tie at the cut
    assert topk_disagreement((rows, scores), (np.array([7, 4, 9]), np.array([0.9, 0.5, 0.4]))) is not None
    assert "chosen by one side only" in topk_disagreement((rows, scores), (np.array([4, 2, 9]), scores))
    assert "differ" in topk_disagreement((rows, scores), (rows, scores + [0, 0.01, 0]))
    assert "rows vs" in topk_disagreement((rows, scores), (rows[:2], scores[:2]))
