"""Strategies: which unlabelled examples to label next.

`STRATEGIES` is the registry `al --strategy` names (`create_strategy(name)`); each `Strategy` declares
the learner capabilities it needs (`requires`) and picks with `select(learner, candidates, k, seed)`.
Scores are "higher = acquire first"; ties are broken by `scoring.tie_priority` (a hash of row and
seed). Importing this package registers every strategy module.

The algorithms behind the strategies researchers compare against are pure functions on numpy arrays,
one module per family: `kcenter` (core-set), `badge`, `typiclust`, `probcover`, `bald` (BALD and
BatchBALD), `stochastic` (power / softmax / rank batches), `cluster_margin`, `candidates` (SEALS kNN
candidate pools) and `cold_start` (seed sets without labels). Posterior samples of the linear head,
which BALD needs, come from `embedcache.learners.posterior`. Their shared conventions: rows are int64
indices into the pool arrays; every random choice comes from `seed`; exact ties go by
`scoring.tie_priority(row, seed)`; the result is (rows, scores) with the first-chosen row first, like
`scoring.top_k`; bad options raise `ConfigError` naming the option.
"""

from __future__ import annotations

from embedcache.strategies import families, random_sampling, uncertainty  # noqa: F401  (registration)
from embedcache.strategies.base import (STRATEGIES, Option, Strategy, StrategySpec, cold_start_spec, create_strategy,
                                        declared_options,
                                        parse_strategies, parse_strategy, strategy_spec)

__all__ = ["STRATEGIES", "Option", "Strategy", "StrategySpec", "cold_start_spec", "create_strategy", "declared_options", "parse_strategies",
           "parse_strategy", "strategy_spec"]
