"""The learner contract: what the AL loop and the strategies may ask of a learner, as `typing.Protocol`s.

Every learner offers the core `Learner`: `fit(rows, y) -> self`, `predict_proba(rows)`, `describe()`
(its config for the run header, with its registered name under "learner"), `prepare(pool,
evaluation)` (called once before the first round; `evaluation` names the row sets predicted every
round: the evaluated splits and the stop set), `warm_start` (the loop replays earlier fits on
resume when True), `training_` (facts about the last fit: steps, loss_initial, loss_final,
stopped_by) and `ranker` (the learner whose outputs rank the pool: itself, or the scoring side of a
hybrid). Rows index the learner's data (cache rows in linear mode, dataset rows in finetune mode).

What a strategy needs of a learner is a capability, one protocol each, named by `Capability`:

* proba — `predict_proba(rows)`: `[n, C]` class probabilities (every learner).
* logits — `predict_logits(rows)`: `[n, C]` logits; a class the model cannot predict has -inf.
* fused-ranking — `top_k(candidates, strategy, k, seed)` for every score of
  `scoring.UNCERTAINTY_SCORES`: what `scoring.top_k` on that score of `predict_proba` (or
  `predict_logits`) gives, up to ties, without materialising the outputs.
* embed — `embed(rows)`: `[n, D]` the vectors the last layer reads (a linear head's standardised
  cached vectors, a finetuned network's penultimate features).
* gradient-embedding — `gradient_embedding(rows)`: BADGE's `(p - onehot(ŷ)) ⊗ [h, 1]`, factorised as
  (residual `[n, C]`, inputs `[n, D + 1]`: h and the constant input of the bias), so `n × C·D` is
  never materialised.
* posterior-samples — `posterior_proba(rows, n_samples, seed)`: `[S, n, C]` class probabilities
  under S posterior draws of the model, deterministic for the seed.

`capabilities(learner)` tests them with `isinstance` on the runtime-checkable protocols (or
`issubclass`, given a learner class), so a strategy's `requires` is checked against a learner before
a run writes anything, and nothing needs to probe a learner with getattr.
"""

from __future__ import annotations

import dataclasses
import enum
import types
from typing import Any, Callable, Mapping, Protocol, TypeVar, runtime_checkable

import numpy as np

from embedcache.errors import ConfigError
from embedcache.registry import Registry


class Capability(str, enum.Enum):
    """What a learner can do for a strategy beyond fitting."""

    PROBA = "proba"
    LOGITS = "logits"
    FUSED_RANKING = "fused-ranking"
    EMBED = "embed"
    GRADIENT_EMBEDDING = "gradient-embedding"
    POSTERIOR_SAMPLES = "posterior-samples"

    def __str__(self) -> str:
        return self.value


@runtime_checkable
class Learner(Protocol):
    """The core contract every learner the loop drives fulfils."""

    warm_start: bool
    training_: Mapping[str, Any]

    def fit(self, rows: np.ndarray, y: np.ndarray) -> "Learner": ...

    def predict_proba(self, rows: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict: ...

    def prepare(self, pool: np.ndarray, evaluation: dict[str, np.ndarray]) -> None: ...

    @property
    def ranker(self) -> "Learner": ...


@runtime_checkable
class PredictsProba(Protocol):
    def predict_proba(self, rows: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class PredictsLogits(Protocol):
    def predict_logits(self, rows: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class RanksPool(Protocol):
    def top_k(self, candidates: np.ndarray, strategy: str, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class Embeds(Protocol):
    def embed(self, rows: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class GradientEmbeds(Protocol):
    def gradient_embedding(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class SamplesPosterior(Protocol):
    def posterior_proba(self, rows: np.ndarray, n_samples: int, seed: int) -> np.ndarray: ...


@runtime_checkable
class ChecksFeatures(Protocol):
    """A learner on stored features that can name the rows whose features hold NaN or inf (the loop
    refuses them before a run writes anything)."""

    def nonfinite_rows(self, rows: np.ndarray) -> np.ndarray: ...


#: The protocol that tests each capability.
CAPABILITY_PROTOCOLS: dict[Capability, type] = {
    Capability.PROBA: PredictsProba,
    Capability.LOGITS: PredictsLogits,
    Capability.FUSED_RANKING: RanksPool,
    Capability.EMBED: Embeds,
    Capability.GRADIENT_EMBEDDING: GradientEmbeds,
    Capability.POSTERIOR_SAMPLES: SamplesPosterior,
}


def capabilities(learner: Any) -> frozenset[Capability]:
    """The capabilities a learner offers; given a learner class, those every instance of it offers."""
    test = issubclass if isinstance(learner, type) else isinstance
    return frozenset(c for c, protocol in CAPABILITY_PROTOCOLS.items() if test(learner, protocol))


@dataclasses.dataclass(frozen=True)
class RankerCapabilities:
    """The registered name and capabilities of the learner that ranks the pool (`learner.ranker`):
    what a run's strategy is checked against while the run is planned, before any learner is built."""

    name: str
    capabilities: frozenset[Capability]

    @classmethod
    def of(cls, learner: Learner) -> "RankerCapabilities":
        ranker = learner.ranker
        return cls(ranker.describe()["learner"], capabilities(ranker))

    @classmethod
    def of_class(cls, learner_class: type) -> "RankerCapabilities":
        """For a learner class whose instances rank with themselves (every one but the hybrid)."""
        return cls(learner_class.name, capabilities(learner_class))

    def require(self, needed: frozenset[Capability], strategy: str, role: str = "strategy") -> None:
        """Raise a ConfigError naming the strategy (or another `role`: a seed strategy, a candidate
        restriction), this learner and what it lacks, unless it offers `needed`."""
        missing = sorted(needed - self.capabilities)
        if missing:
            offers = ", ".join(sorted(self.capabilities))
            raise ConfigError(f"{role} {strategy!r} needs the {' and '.join(missing)} capability of the learner "
                              f"that ranks the pool, which the {self.name} learner lacks (it offers {offers}); "
                              "choose another strategy, or rank with a learner that has it")


class BaseLearner:
    """Defaults that keep learners short: nothing to prepare, no warm start, no fit yet, ranks itself."""

    #: The registered name (set by `register_learner`).
    name: str = ""
    warm_start: bool = False
    #: Facts about the last fit; empty (and read-only) before the first.
    training_: Mapping[str, Any] = types.MappingProxyType({})

    def prepare(self, pool: np.ndarray, evaluation: dict[str, np.ndarray]) -> None:
        """Called once by the loop before the first round; nothing to do by default."""

    @property
    def ranker(self) -> "BaseLearner":
        return self


LEARNERS: Registry[type] = Registry("learner")
L = TypeVar("L", bound=type)


def register_learner(name: str) -> Callable[[L], L]:
    """Class decorator: register a learner class under `name` (also its `name` attribute)."""
    def decorator(cls: L) -> L:
        cls.name = name
        return LEARNERS.register(name)(cls)
    return decorator


def fit_arguments(rows, y, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """`fit`'s rows and labels as int64 arrays, checked: as many labels as rows, at least one, in range."""
    rows = np.asarray(rows, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    if len(rows) != len(y) or not len(rows):
        raise ConfigError(f"fit needs as many labels as rows (got {len(rows)} rows, {len(y)} labels)")
    if y.min() < 0 or y.max() >= num_classes:
        raise ConfigError(f"labels must be in 0..{num_classes - 1}")
    return rows, y
