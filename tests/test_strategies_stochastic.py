"""Stochastic batches (power / softmax / rank): the sampling law, invariances, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

from embedcache.errors import ConfigError
from embedcache.strategies.stochastic import stochastic_batch


def first_pick_frequencies(scores, mode, beta, draws=4000):
    rows = np.arange(len(scores))
    firsts = [stochastic_batch(scores, rows, 1, seed, mode=mode, beta=beta)[0][0] for seed in range(draws)]
    return np.bincount(firsts, minlength=len(scores)) / draws


@pytest.mark.parametrize("mode, beta, law", [
    ("power", 1.0, lambda s: s),
    ("power", 2.0, lambda s: s ** 2),
    ("softmax", 1.5, lambda s: np.exp(1.5 * s)),
    ("rank", 1.0, lambda s: 1.0 / np.array([3, 1, 4, 2])),
])
def test_first_pick_follows_the_law(mode, beta, law):
    scores = np.array([0.4, 1.0, 0.1, 0.6])
    expected = law(scores) / law(scores).sum()
    np.testing.assert_allclose(first_pick_frequencies(scores, mode, beta), expected, atol=0.025)


def test_beta_zero_is_uniform_and_zero_scores_come_last():
    scores = np.array([0.0, 1.0, 2.0, 0.0, 5.0])
    frequencies = first_pick_frequencies(scores, "power", 0.0, draws=3000)
    np.testing.assert_allclose(frequencies, np.full(5, 0.2), atol=0.03)
    rows, keys = stochastic_batch(scores, np.arange(5), 5, seed=3)
    assert set(rows[-2:].tolist()) == {0, 3} and np.all(np.isneginf(keys[-2:]))


def test_a_rows_draw_does_not_depend_on_the_other_candidates():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    rows = np.arange(1000, 1200)
    full, _ = stochastic_batch(scores, rows, 10, seed=4)
    keep = np.isin(rows, full) | (rng.random(200) < 0.5)
    shuffled = rng.permutation(np.flatnonzero(keep))
    subset, _ = stochastic_batch(scores[shuffled], rows[shuffled], 10, seed=4)
    assert np.array_equal(full, subset)
    assert not np.array_equal(full, stochastic_batch(scores, rows, 10, seed=5)[0])


def test_softmax_ignores_a_shift_and_rank_ignores_the_scale():
    scores = np.random.default_rng(1).random(50)
    rows = np.arange(50)
    assert np.array_equal(stochastic_batch(scores, rows, 8, 2, mode="softmax")[0],
                          stochastic_batch(scores + 3.0, rows, 8, 2, mode="softmax")[0])
    assert np.array_equal(stochastic_batch(scores, rows, 8, 2, mode="rank")[0],
                          stochastic_batch(scores ** 3 * 10, rows, 8, 2, mode="rank")[0])


@pytest.mark.parametrize("kwargs, message", [
    ({"beta": -1.0}, "beta must be a finite number >= 0"),
    ({"beta": float("inf")}, "beta must be a finite number >= 0"),
    ({"mode": "gumbel"}, "mode must be one of"),
    ({"scores": np.array([-0.1, 0.5, 0.2])}, "power sampling needs non-negative scores"),
    ({"scores": np.array([0.1, 0.5])}, "scores must have 1 dimensions and one row per entry of candidates"),
    ({"k": 4}, "k = 4 is more than the 3 candidates"),
])
def test_bad_options_name_the_option(kwargs, message):
    arguments = {"scores": np.array([0.1, 0.5, 0.2]), "candidates": np.arange(3), "k": 2, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        stochastic_batch(**arguments)
