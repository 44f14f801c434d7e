"""Core-set (greedy k-center): exact equality with a brute-force reference, ties, determinism, blocks,
bounded memory and option errors."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from embedcache.errors import ConfigError
from embedcache.scoring import tie_priority
from embedcache.strategies.kcenter import kcenter_greedy


def integer_pool(n: int = 80, dim: int = 4, seed: int = 0) -> np.ndarray:
    """Small integer coordinates: every squared distance is exact in float32, and ties are common."""
    return np.random.default_rng(seed).integers(-3, 4, size=(n, dim)).astype(np.float32)


def reference_kcenter(x: np.ndarray, candidates, labelled, k: int, seed: int):
    """Straightforward greedy k-center on the full distance matrix (float64)."""
    x = x.astype(np.float64)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    candidates = np.sort(np.asarray(candidates))
    nearest = d2[np.ix_(candidates, labelled)].min(axis=1) if len(labelled) else np.full(len(candidates), np.inf)
    open_ = np.ones(len(candidates), dtype=bool)
    rows, scores = [], []
    for _ in range(k):
        values = np.where(open_, nearest, -np.inf)
        tied = np.flatnonzero(values == values.max())
        pick = tied[np.argmin(tie_priority(candidates[tied], seed))]
        rows.append(candidates[pick])
        scores.append(np.sqrt(values[pick]))
        open_[pick] = False
        nearest = np.minimum(nearest, d2[candidates, candidates[pick]])
    return np.array(rows), np.array(scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_matches_brute_force_exactly(seed, layout):
    x = integer_pool(seed=seed)
    rng = np.random.default_rng(seed)
    if layout == "dense":  # candidates fill their stretch of the table: blocks are views
        labelled = rng.choice(80, 6, replace=False)
        candidates = np.setdiff1d(np.arange(80), labelled)
    else:  # a few scattered candidates: gathered
        chosen = rng.choice(80, 30, replace=False)
        labelled, candidates = chosen[:5], chosen[5:]
    rows, scores = kcenter_greedy(x, rng.permutation(candidates), labelled, 12, seed, block_rows=7)
    expected_rows, expected_scores = reference_kcenter(x, candidates, labelled, 12, seed)
    assert np.array_equal(rows, expected_rows)
    assert np.array_equal(scores, expected_scores)


def test_nothing_labelled_starts_with_the_tie_rule():
    x = integer_pool()
    rows, scores = kcenter_greedy(x, np.arange(80), [], 5, seed=3)
    assert scores[0] == np.inf and rows[0] == np.arange(80)[np.argmin(tie_priority(np.arange(80), 3))]
    assert np.array_equal(rows, reference_kcenter(x, np.arange(80), np.array([], dtype=int), 5, 3)[0])
    assert np.all(np.diff(scores[1:]) <= 0)  # the farthest distance only shrinks


def test_deterministic_and_independent_of_blocks_and_order():
    x = np.random.default_rng(5).standard_normal((3000, 16)).astype(np.float32)
    labelled = np.arange(0, 3000, 97)
    candidates = np.setdiff1d(np.arange(3000), labelled)
    first = kcenter_greedy(x, candidates, labelled, 25, seed=11)
    again = kcenter_greedy(x, candidates[::-1], labelled, 25, seed=11)
    small_blocks = kcenter_greedy(x, candidates, labelled, 25, seed=11, block_rows=100)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert np.array_equal(first[0], small_blocks[0])
    np.testing.assert_allclose(first[1], small_blocks[1], rtol=1e-5)
    assert len(set(first[0].tolist())) == 25 and not set(first[0].tolist()) & set(labelled.tolist())


def test_float16_table():
    x = integer_pool()
    rows16, _ = kcenter_greedy(x.astype(np.float16), np.arange(10, 80), np.arange(10), 8, seed=0)
    assert np.array_equal(rows16, kcenter_greedy(x, np.arange(10, 80), np.arange(10), 8, seed=0)[0])


def test_memory_stays_bounded_on_a_large_pool():
    """No copy of the pool and nothing pool × labelled: peak allocations stay far below the table."""
    x = np.random.default_rng(0).standard_normal((60_000, 64)).astype(np.float32)  # 15 MiB
    labelled = np.arange(0, 60_000, 300)
    candidates = np.setdiff1d(np.arange(60_000), labelled)
    tracemalloc.start()
    try:
        kcenter_greedy(x, candidates, labelled, 10, seed=0, block_rows=2048)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.4 * x.nbytes  # per-row state (float64 + masks) and one block, never the table


@pytest.mark.parametrize("call, message", [
    (lambda x: kcenter_greedy(x, np.arange(5), [], 6, 0), "k = 6 is more than the 5 candidates"),
    (lambda x: kcenter_greedy(x, np.arange(5), [], 0, 0), "k must be a positive integer"),
    (lambda x: kcenter_greedy(x, [1, 1, 2], [], 1, 0), "candidates lists rows more than once"),
    (lambda x: kcenter_greedy(x, [1, 2], [2], 1, 0), "candidates and labelled share"),
    (lambda x: kcenter_greedy(x, [1, 200], [], 1, 0), "candidates holds rows outside"),
    (lambda x: kcenter_greedy(x[0], [1], [], 1, 0), "embeddings must be a 2-D float array"),
    (lambda x: kcenter_greedy(x, [1, 2], [], 1, 0, block_rows=0), "block_rows must be a positive integer"),
    (lambda x: kcenter_greedy(x, [1, 2], [], 1, 0, device="tpu"), "device must be"),
])
def test_bad_options_name_the_option(call, message):
    with pytest.raises(ConfigError, match=message):
        call(integer_pool())
