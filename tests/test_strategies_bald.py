"""BALD and BatchBALD against enumeration of every joint label configuration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from embedcache.errors import ConfigError
from embedcache.scoring import tie_priority
from embedcache.strategies.bald import bald, bald_scores, batchbald


def posterior(n: int = 14, samples: int = 5, classes: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, 1, classes)) * 1.5 + rng.standard_normal((n, samples, classes))
    proba = np.exp(logits)
    return proba / proba.sum(axis=2, keepdims=True)


def mutual_information(proba: np.ndarray, rows: list[int]) -> float:
    """I(y_rows; w) by enumerating every configuration of the rows' labels (T samples, equal weight)."""
    n_samples, n_classes = proba.shape[1:]
    joint_entropy = 0.0
    for labels in itertools.product(range(n_classes), repeat=len(rows)):
        p = np.mean([np.prod([proba[r, t, c] for r, c in zip(rows, labels)]) for t in range(n_samples)])
        joint_entropy -= p * np.log(p) if p > 0 else 0.0
    conditional = sum(-(proba[r] * np.log(proba[r])).sum(axis=1).mean() for r in rows)
    return joint_entropy - conditional


def reference_batchbald(proba, candidates, k, seed):
    chosen, scores = [], []
    for _ in range(k):
        open_ = [i for i in range(len(candidates)) if i not in chosen]
        values = np.array([mutual_information(proba, chosen + [i]) for i in open_])
        tied = [open_[i] for i in np.flatnonzero(values == values.max())]
        pick = tied[int(np.argmin(tie_priority(candidates[tied], seed)))]
        chosen.append(pick)
        scores.append(values.max())
    return candidates[chosen], np.array(scores)


def test_bald_scores_by_hand():
    proba = np.array([[[0.5, 0.5], [0.5, 0.5]],  # agreeing uncertain samples: no disagreement
                      [[1.0, 0.0], [0.0, 1.0]],  # confident samples that disagree: log 2
                      [[0.9, 0.1], [0.9, 0.1]]])
    np.testing.assert_allclose(bald_scores(proba), [0.0, np.log(2), 0.0], atol=1e-15)
    rows, scores = bald(proba, np.array([7, 8, 9]), 1, seed=0)
    assert rows.tolist() == [8] and scores[0] == pytest.approx(np.log(2))


def test_bald_is_the_top_k_of_the_mutual_information():
    proba = posterior(n=30)
    rows, scores = bald(proba.astype(np.float32), np.arange(100, 130), 6, seed=1)
    reference = np.array([mutual_information(proba, [i]) for i in range(30)])
    assert rows.tolist() == (100 + np.argsort(-reference)[:6]).tolist()
    np.testing.assert_allclose(scores, np.sort(reference)[::-1][:6], rtol=1e-5)


@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_batchbald_equals_enumeration_while_exact(lazy, seed):
    proba = posterior(seed=seed)
    candidates = np.arange(50, 64)
    rows, scores = batchbald(proba, candidates, 4, seed, joint_samples=27, lazy=lazy)
    expected_rows, expected_scores = reference_batchbald(proba, candidates, 4, seed)
    assert np.array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-9)
    shuffle = np.random.default_rng(seed).permutation(14)  # the candidates' order does not matter
    assert np.array_equal(batchbald(proba[shuffle], candidates[shuffle], 4, seed, joint_samples=27, lazy=lazy)[0],
                          rows)


def test_batchbald_sampled_estimate_is_close_and_seeded():
    proba = posterior(n=10, samples=8, classes=3, seed=3)
    candidates = np.arange(10)
    # 3^3 = 27 configurations of three picked rows > 24 samples: the fourth step samples
    rows, scores = batchbald(proba, candidates, 4, seed=5, joint_samples=24_000)
    expected_rows, expected_scores = reference_batchbald(proba, candidates, 4, 5)
    assert rows[:3].tolist() == expected_rows[:3].tolist()
    assert scores[3] == pytest.approx(mutual_information(proba, rows.tolist()), rel=0.02)
    again = batchbald(proba, candidates, 4, seed=5, joint_samples=24_000)
    assert np.array_equal(scores, again[1])
    small = [batchbald(proba, candidates, 4, seed=s, joint_samples=24)[1][3] for s in range(4)]
    assert len(set(small)) > 1  # the seed drives the sampled configurations


def test_batchbald_avoids_a_duplicate_that_bald_takes():
    proba = posterior(n=12, seed=6)
    top = int(np.argmax(bald_scores(proba)))
    proba = np.concatenate([proba, proba[top:top + 1]])  # row 12 is row `top` again
    bald_rows, _ = bald(proba, np.arange(13), 2, seed=0)
    batch_rows, _ = batchbald(proba, np.arange(13), 2, seed=0)
    assert sorted(bald_rows.tolist()) == sorted([top, 12])
    assert len({top, 12} & set(batch_rows.tolist())) == 1


@pytest.mark.parametrize("call, message", [
    (lambda p: bald(p, np.arange(13), 1, 0), r"proba_samples must be float \[rows, samples, classes\]"),
    (lambda p: bald(p[:, :, :1], np.arange(14), 1, 0), "at least 2 classes"),
    (lambda p: bald(p * 2, np.arange(14), 1, 0), "must hold probabilities"),
    (lambda p: bald(np.where(p > 0.5, np.nan, p), np.arange(14), 1, 0), "must hold probabilities"),
    (lambda p: bald(p, np.arange(14), 15, 0), "k = 15 is more than the 14 candidates"),
    (lambda p: batchbald(p, np.arange(14), 2, 0, joint_samples=0), "joint_samples must be a positive integer"),
    (lambda p: batchbald(p, np.arange(14), 2, 0, joint_samples=3), r"joint_samples \(3\) must be at least"),
    (lambda p: batchbald(p, np.zeros(14, dtype=int), 2, 0), "candidates lists rows more than once"),
])
def test_bad_options_name_the_option(call, message):
    with pytest.raises(ConfigError, match=message):
        call(posterior())
