"""BADGE: k-means++ seeding on gradient embeddings equals a reference that materialises them."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from embedcache.errors import ConfigError
from embedcache.scoring import tie_priority
from embedcache.strategies._common import generator
from embedcache.strategies.badge import badge


def dyadic_case(n: int = 60, dim: int = 5, classes: int = 3, seed: int = 0):
    """Integer features and probabilities in multiples of 1/8: every product and sum is exact, so a
    reference computing ‖g_i - g_j‖² from materialised g gets the same bits."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=(n, dim)).astype(np.float32)
    counts = rng.multinomial(8, np.ones(classes) / classes, size=n)
    return x, counts / 8.0


def reference_badge(h: np.ndarray, proba: np.ndarray, rows: np.ndarray, k: int, seed: int):
    """Materialise g = (p - onehot(argmax p)) ⊗ h, pick argmax ‖g‖, then sample ∝ min squared distance."""
    order = np.argsort(rows)
    rows, h, proba = rows[order], h[order].astype(np.float64), proba[order]
    r = proba.copy()
    r[np.arange(len(r)), proba.argmax(axis=1)] -= 1.0
    g = (r[:, :, None] * h[:, None, :]).reshape(len(r), -1)
    norms = (g * g).sum(1)
    tied = np.flatnonzero(norms == norms.max())
    first = tied[np.argmin(tie_priority(rows[tied], seed))]
    picks, scores = [first], [norms[first]]
    rng = generator(seed, "badge")
    d2 = np.full(len(g), np.inf)
    for _ in range(k - 1):
        d2 = np.minimum(d2, ((g - g[picks[-1]]) ** 2).sum(1))
        d2[picks] = 0.0
        total = np.cumsum(d2)
        pick = int(np.searchsorted(total, rng.random() * total[-1], side="right"))
        picks.append(pick)
        scores.append(d2[pick])
    return rows[picks], np.array(scores)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_seeding_matches_materialised_gradients_exactly(seed, layout):
    x, proba = dyadic_case(seed=seed)
    rng = np.random.default_rng(seed)
    candidates = np.arange(3, 57) if layout == "dense" else np.sort(rng.choice(60, 25, replace=False))
    shuffled = rng.permutation(len(candidates))
    rows, scores = badge(x, candidates[shuffled], proba[candidates][shuffled], 10, seed, block_rows=9)
    expected_rows, expected_scores = reference_badge(x[candidates], proba[candidates], candidates, 10, seed)
    assert np.array_equal(rows, expected_rows)
    assert np.array_equal(scores, expected_scores)


def test_standardisation_and_intercept_are_folded_in():
    x, proba = dyadic_case(seed=4)
    mean = np.full(x.shape[1], 0.5)
    scale = np.full(x.shape[1], 2.0)
    rows, scores = badge(x, np.arange(60), proba, 8, seed=2, mean=mean, scale=scale, intercept=True)
    h = np.hstack([(x - mean) / scale, np.ones((60, 1))])
    expected_rows, expected_scores = reference_badge(h, proba, np.arange(60), 8, 2)
    assert np.array_equal(rows, expected_rows)
    assert np.array_equal(scores, expected_scores)


def test_two_softmax_columns_pick_like_one_logit():
    """A binary head given as [1 - p, p] has D² twice the one-logit form's: the same picks."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    p = rng.random(300)
    rows2, scores2 = badge(x, np.arange(300), np.stack([1 - p, p], 1), 10, seed=1)
    residual = p - (p >= 0.5)  # one logit: r = p - y_hat, and ‖g_i - g_j‖² = ‖r_i h_i - r_j h_j‖²
    g = residual[:, None] * x.astype(np.float64)
    assert np.isclose(scores2[0], 2 * (g[rows2[0]] ** 2).sum())


def test_all_gradients_zero_falls_back_to_the_tie_rule():
    x = np.ones((20, 3), dtype=np.float32)
    proba = np.tile([1.0, 0.0], (20, 1))  # certain everywhere: g = 0
    rows, scores = badge(x, np.arange(20), proba, 4, seed=9)
    expected = np.arange(20)[np.argsort(tie_priority(np.arange(20), 9))]
    assert rows[0] == expected[0] and np.array_equal(scores, np.zeros(4)) and len(set(rows.tolist())) == 4


def test_deterministic_blocks_and_bounded_memory():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40_000, 256)).astype(np.float32)  # 41 MB
    proba = rng.dirichlet(np.ones(4), size=39_000)
    candidates = np.arange(1000, 40_000)
    tracemalloc.start()
    try:
        first = badge(x, candidates, proba, 12, seed=5, block_rows=4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # per-row state (float64 [n, C] residuals and a few vectors) and one block: no copy of the table,
    # never the [n, C·D] gradient embeddings (320 MB here)
    assert peak < 0.25 * x.nbytes
    again = badge(x, candidates, proba, 12, seed=5, block_rows=1000)
    assert np.array_equal(first[0], again[0])
    assert not np.array_equal(first[0], badge(x, candidates, proba, 12, seed=6)[0])


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 61}, "k = 61 is more than the 60 candidates"),
    ({"proba": np.ones((59, 3)) / 3}, "proba must have 2 dimensions and one row per entry of candidates"),
    ({"proba": np.full((60, 3), np.nan)}, "proba holds NaN"),
    ({"scale": np.zeros(5)}, "scale must be positive"),
    ({"mean": np.zeros(4)}, "mean must be 5 finite numbers"),
])
def test_bad_options_name_the_option(kwargs, message):
    x, proba = dyadic_case()
    arguments = {"embeddings": x, "candidates": np.arange(60), "proba": proba, "k": 5, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        badge(**arguments)
