"""Learners the AL loop drives: `fit(rows, y) -> self` and `predict_proba(rows) -> [n, C]`.

Rows index the learner's data (cache rows in linear mode, dataset rows in finetune mode); the loop
never knows which. Optional hooks: `prepare(pool, evaluation)` once before the first round,
`top_k(candidates, strategy, k, seed)` for a fused scorer, `describe()` for the run header,
`warm_start` (the loop replays earlier fits on resume when True), and `training_` (facts about
the last fit: steps, loss_initial, loss_final, stopped_by).
"""
