"""Acquisition: formulas against hand-computed values, the tie rule, and one conformance test
that every registered strategy passes."""

from __future__ import annotations

import numpy as np
import pytest

from embedcache.acquisition import STRATEGIES, create_strategy
from embedcache.errors import ConfigError
from embedcache.scoring import entropy, least_confidence, margin, tie_priority, top_k, topk_disagreement

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


class _Fixed:
    """A fitted learner stub whose probabilities depend only on the row."""

    def __init__(self, classes: int = 3):
        self.table = np.random.default_rng(1).dirichlet(np.ones(classes), size=500)
        self.table[::7] = self.table[0]  # planted ties

    def predict_proba(self, rows):
        return self.table[rows]


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_conforms(name):
    strategy = create_strategy(name)
    candidates = np.sort(np.random.default_rng(2).choice(500, 200, replace=False))
    rows, scores = strategy.select(_Fixed(), candidates, 17, seed=5)
    assert len(rows) == 17 == len(set(rows.tolist())) and set(rows.tolist()) <= set(candidates.tolist())
    assert np.all(np.diff(scores) <= 0), "best first"
    again, again_scores = strategy.select(_Fixed(), candidates[::-1].copy(), 17, seed=5)
    assert np.array_equal(rows, again) and np.array_equal(scores, again_scores), "order of candidates is irrelevant"
    everything, _ = strategy.select(_Fixed(), candidates, 500, seed=5)
    assert sorted(everything.tolist()) == candidates.tolist()
    if name != "random":
        proba = _Fixed().predict_proba(candidates)
        best = strategy.score(proba).max()
        assert np.isclose(scores[0], best)


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
