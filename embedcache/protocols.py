"""AL protocols: seed set, acquisition schedule, pool, and what to evaluate. The paper's presets.

| preset     | seed set            | per round | acquired | pool per round          | evaluation |
|------------|---------------------|-----------|----------|-------------------------|------------|
| waterbirds | 40, class-balanced  | 5         | 320      | whole train split       | val: average, per label*place, worst group |
| treeperson | 40, class-balanced  | 5         | 320      | whole train split       | val: average, per label*place, worst group |
| iwildcam   | 182, class-balanced | 20        | 1456     | random 12,000 per round | val (OOD) and id_val: accuracy, macro-F1, class-balanced |
| amazon     | 10, random          | 2         | 90       | random 2,000 per round  | val (OOD): average, 10th-percentile per-user, per category |
| appendix-d | 32, class-balanced  | 1         | 64       | whole train split       | as waterbirds |

`appendix-d` is the smaller Waterbirds protocol of the paper's Appendix D (stop rules compared:
`--recipe stop=val_plateau` against the default loss-ratio stop). The appendix gives the seed set,
batch and budget; the class-balanced seed set and the evaluation are the Waterbirds preset's.
"""

from __future__ import annotations

import dataclasses

from embedcache.errors import ConfigError
from embedcache.metrics import EvalSpec
from embedcache.registry import Registry
from embedcache.stopping import STOP_SET_SIZE

PROTOCOLS: Registry["Protocol"] = Registry("protocol")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One AL experiment design. `per_round` is a batch size, or a schedule of batch sizes per round
    (the last one repeats until the budget is spent). `stop_set_size`: examples of the pool (a sample
    drawn once from the run seed) the stopping signals are measured on every round (0: none)."""

    name: str = "custom"
    seed_size: int = 40
    seed_balanced: bool = True
    per_round: int | tuple[int, ...] = 5
    budget: int = 320
    pool_size: int | None = None  # candidates scored per round, redrawn each round; None = whole pool
    pool_split: str = "train"
    eval_splits: tuple[str, ...] = ("val",)
    eval_every: int = 1
    evaluation: EvalSpec = EvalSpec()
    stop_set_size: int = STOP_SET_SIZE
    #: How the seed set is chosen: None follows `seed_balanced` (random, or class-balanced); a strategy that
    #: can choose from embeddings alone (typiclust, probcover, coreset; with options) chooses it without labels.
    seed_strategy: str | None = None
    #: "knn:K": score only the unlabelled rows among the K nearest neighbours of the labelled ones (SEALS).
    candidates: str | None = None

    def __post_init__(self) -> None:
        self._normalise_seed_strategy()
        if self.candidates is not None:
            object.__setattr__(self, "candidates", f"knn:{knn_candidates(self.candidates)}")
        sizes = self.per_round if isinstance(self.per_round, tuple) else (self.per_round,)
        if self.seed_size < 1:
            raise ConfigError("must be at least 1", param="seed_size")
        if self.budget < 0:
            raise ConfigError("must be 0 or more", param="budget")
        if not sizes or min(sizes) < 1:
            raise ConfigError("every size must be at least 1", param="per_round")
        if self.pool_size is not None and self.pool_size < 1:
            raise ConfigError("must be at least 1", param="pool_size")
        largest = max(self.schedule(), default=0)
        if self.pool_size is not None and self.pool_size < largest:
            raise ConfigError(f"{self.pool_size} is smaller than the largest batch ({largest} per round): each round "
                              "acquires its batch from the examples it scores, so the pool size must be at least "
                              f"{largest}", param="pool_size")
        if self.eval_every < 1:
            raise ConfigError("must be at least 1", param="eval_every")
        if self.stop_set_size < 0:
            raise ConfigError("must be 0 (no stopping signals) or more", param="stop_set_size")
        if not self.eval_splits:
            raise ConfigError("evaluate at least one split", param="eval_splits")

    def _normalise_seed_strategy(self) -> None:
        """random and balanced are `seed_balanced` (so records that predate `seed_strategy` keep their
        identity); any other name is a cold-start strategy, and the seed set is then not class-balanced.
        Whether that strategy exists and can choose without labels, and its canonical spelling, are settled
        when a run is planned (`embedcache.strategies.cold_start_spec`): protocols sit below the strategies."""
        if self.seed_strategy is None:
            return
        text = self.seed_strategy.strip()
        if text in ("random", "balanced"):
            object.__setattr__(self, "seed_balanced", text == "balanced")
            object.__setattr__(self, "seed_strategy", None)
            return
        object.__setattr__(self, "seed_strategy", text)
        object.__setattr__(self, "seed_balanced", False)

    @property
    def seed_method(self) -> str:
        """random, balanced, or the cold-start strategy's spec."""
        return self.seed_strategy or ("balanced" if self.seed_balanced else "random")

    @property
    def knn_candidates(self) -> int | None:
        """SEALS's K, when candidates are restricted."""
        return None if self.candidates is None else knn_candidates(self.candidates)

    def schedule(self) -> list[int]:
        """Batch sizes of the acquisition rounds, summing to the budget."""
        sizes = list(self.per_round) if isinstance(self.per_round, tuple) else [self.per_round]
        batches, left = [], self.budget
        while left > 0:
            size = min(sizes[min(len(batches), len(sizes) - 1)], left)
            batches.append(size)
            left -= size
        return batches

    @property
    def n_rounds(self) -> int:
        """Rounds trained and evaluated: the seed-set round plus one per acquisition batch."""
        return len(self.schedule()) + 1

    def replace(self, **changes) -> "Protocol":
        """A copy with some fields overridden (None values leave a field as it is)."""
        evaluation = {k: changes.pop(k) for k in ("groups", "worst_group", "metrics", "percentiles") if k in changes}
        evaluation = {k: v for k, v in evaluation.items() if v is not None}
        changes = {k: v for k, v in changes.items() if v is not None}
        if evaluation:
            changes["evaluation"] = dataclasses.replace(self.evaluation, **evaluation)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as JSON values; seed_strategy and candidates only when set (records written before
        they existed keep their identity)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if v is not None or k not in ("seed_strategy", "candidates")}


def knn_candidates(text: str) -> int:
    """K of a `knn:K` candidate restriction."""
    kind, _, k = str(text).partition(":")
    if kind != "knn" or not k.isdigit() or int(k) < 1:
        raise ConfigError(f"{text!r}: expected knn:K with K a positive integer (SEALS: the K nearest unlabelled "
                          "neighbours of each labelled example), e.g. knn:100", param="candidates")
    return int(k)


def _preset(protocol: Protocol) -> Protocol:
    PROTOCOLS.register(protocol.name)(protocol)
    return protocol


_preset(Protocol(name="custom"))
_preset(Protocol(
    name="waterbirds", seed_size=40, seed_balanced=True, per_round=5, budget=320, eval_splits=("val",),
    evaluation=EvalSpec(groups=("place", "label*place"), worst_group="label*place"),
))
_preset(Protocol(
    name="appendix-d", seed_size=32, seed_balanced=True, per_round=1, budget=64, eval_splits=("val",),
    evaluation=EvalSpec(groups=("place", "label*place"), worst_group="label*place"),
))
_preset(Protocol(
    name="treeperson", seed_size=40, seed_balanced=True, per_round=5, budget=320, eval_splits=("val",),
    evaluation=EvalSpec(groups=("place", "label*place"), worst_group="label*place"),
))
_preset(Protocol(
    name="iwildcam", seed_size=182, seed_balanced=True, per_round=20, budget=1456, pool_size=12000,
    eval_splits=("val", "id_val"), evaluation=EvalSpec(metrics=("macro_f1", "class_balanced_accuracy")),
))
_preset(Protocol(
    name="amazon", seed_size=10, seed_balanced=False, per_round=2, budget=90, pool_size=2000, eval_splits=("val",),
    evaluation=EvalSpec(groups=("category",), percentiles=(("user", 10),)),
))


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.get(name)
