"""Learners the AL loop drives: `fit(rows, y) -> self` and `predict_proba(rows) -> [n, C]`.

Rows index the learner's data (cache rows in linear mode, dataset rows in finetune mode); the loop
never knows which. Optional hooks: `prepare(pool, evaluation)` once before the first round,
`top_k(candidates, strategy, k, seed)` for a fused scorer, `describe()` for the run header,
`warm_start` (the loop replays earlier fits on resume when True), and `training_` (facts about
the last fit: steps, loss_initial, loss_final, stopped_by).
"""

from __future__ import annotations

import numpy as np

from embedcache.errors import ConfigError


def fit_arguments(rows, y, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """`fit`'s rows and labels as int64 arrays, checked: as many labels as rows, at least one, in range."""
    rows = np.asarray(rows, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    if len(rows) != len(y) or not len(rows):
        raise ConfigError(f"fit needs as many labels as rows (got {len(rows)} rows, {len(y)} labels)")
    if y.min() < 0 or y.max() >= num_classes:
        raise ConfigError(f"labels must be in 0..{num_classes - 1}")
    return rows, y
