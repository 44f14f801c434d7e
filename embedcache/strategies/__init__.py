"""Strategies: which unlabelled examples to label next.

`STRATEGIES` is the registry `al --strategy` names (`create_strategy(name)`); each `Strategy` declares
the learner capabilities it needs (`requires`) and picks with `select(learner, candidates, k, seed)`.
Scores are "higher = acquire first"; ties are broken by `scoring.tie_priority` (a hash of row and
seed). Importing this package registers every strategy module.
"""

from __future__ import annotations

from embedcache.strategies import random_sampling, uncertainty  # noqa: F401  (registration)
from embedcache.strategies.base import STRATEGIES, Strategy, create_strategy

__all__ = ["STRATEGIES", "Strategy", "create_strategy"]
