"""Stochastic batch acquisition (Kirsch, Farquhar, Atighehchian, Jesson, Branchaud-Charron & Gal,
"Stochastic Batch Acquisition: A Simple Baseline for Deep Active Learning", TMLR 2023).

Instead of the top k of a score s_i, a batch is *sampled* without replacement, so that rows whose
scores are high but whose information overlaps do not crowd the batch:

* power:   p_i ∝ s_i^β        (scores must be non-negative; a score of 0 is never drawn before the rest)
* softmax: p_i ∝ exp(β s_i)
* rank:    p_i ∝ r_i^(-β)     (r_i = 1 for the highest score)

with β = 1 (the paper's default throughout; β = 0 is uniform sampling). Sampling is the Gumbel-top-k
trick: the k largest of log p_i + G_i with G_i standard Gumbel noise are a draw without replacement.
Each row's noise comes from a hash of (row, seed), like the random strategy's scores, so a row's draw
does not depend on which other rows are candidates or in which order they come.

Any score works (least-confidence, entropy, BALD; for margin, whose embedcache score -(p1 - p2) is
negative, use power on 1 + score or the softmax/rank forms).
"""

from __future__ import annotations

import math

import numpy as np

from embedcache.errors import ConfigError
from embedcache.scoring import tie_priority, top_k
from embedcache.strategies._common import check_aligned, check_k, check_rows, row_uniforms

MODES = ("power", "softmax", "rank")
BETA = 1.0


def stochastic_batch(scores: np.ndarray, candidates: np.ndarray, k: int, seed: int, *, mode: str = "power",
                     beta: float = BETA) -> tuple[np.ndarray, np.ndarray]:
    """k candidates sampled without replacement with p_i ∝ s_i^β / exp(β s_i) / rank_i^-β.

    scores: one score per candidate (higher = more informative), aligned with `candidates`. Returns
    (rows, keys) in the order drawn; a key is the perturbed log-probability log p_i + G_i that ranked
    the row (-inf for zero-probability rows, which come last, by `scoring.tie_priority`).
    """
    given = np.asarray(candidates)
    check_rows(given, np.iinfo(np.int64).max, "candidates")
    rows = given.astype(np.int64)
    k = check_k(k, len(rows))
    scores = check_aligned(scores, len(rows), "scores", 1).astype(np.float64)
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if not (isinstance(beta, (int, float, np.integer, np.floating)) and math.isfinite(beta) and beta >= 0):
        raise ConfigError(f"beta must be a finite number >= 0, got {beta!r}")
    if mode == "power":
        if scores.min() < 0:
            raise ConfigError(f"power sampling needs non-negative scores (got {scores.min()!r}); "
                              "shift the score (e.g. 1 + margin) or use mode='softmax' or 'rank'")
        with np.errstate(divide="ignore"):
            log_p = beta * np.log(scores) if beta > 0 else np.zeros(len(scores))
    elif mode == "softmax":
        log_p = beta * scores
    else:
        order = np.lexsort((tie_priority(rows, seed), -scores))  # rank 1 = highest score, ties by the tie rule
        rank = np.empty(len(rows), dtype=np.float64)
        rank[order] = np.arange(1, len(rows) + 1)
        log_p = -beta * np.log(rank)
    gumbel = -np.log(-np.log(row_uniforms(rows, seed, "stochastic batch")))
    return top_k(log_p + gumbel, rows, k, seed)
