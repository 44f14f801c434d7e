"""Learners the AL loop drives, registered by name: linear (a head on cached embeddings), finetune (the
paper's protocol) and hybrid (evaluate with one, rank with the other).

The contract they fulfil and the capabilities strategies may ask of them are in
`embedcache.learners.base`; importing this package imports every learner module (registration).
"""

from __future__ import annotations

from embedcache.learners import finetune, hybrid, linear  # noqa: F401  (registration)
from embedcache.learners.base import (LEARNERS, BaseLearner, Capability, Learner, RankerCapabilities, capabilities,
                                      register_learner)

__all__ = ["LEARNERS", "BaseLearner", "Capability", "Learner", "RankerCapabilities", "capabilities",
           "register_learner"]
