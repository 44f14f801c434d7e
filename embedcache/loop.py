"""The active-learning loop. It drives any learner of the contract in `embedcache.learners.base`
and never knows whether that is a linear head on cached embeddings or a finetuned network.

Round r: fit on the labelled set, evaluate the requested splits, then (unless the budget is spent)
score the unlabelled pool (a fresh random subsample of it each round when the protocol has a
`pool_size`) and acquire the next batch. Round 0 trains on the seed set. Every random choice (seed
set, pool subsample, tie-breaks, the random strategy) is drawn from the run seed and the round
number, so a run is reproducible, and a resumed run continues exactly as an uninterrupted one.

A run is planned before it is executed: `Plan.make` checks the protocol against the data (and the
features' finiteness), `plan_run` the strategy (a registered name, and one whose `requires` the
learner that ranks the pool offers), the seed set and any record already on disk, all without
writing; `execute` then takes the record's lock and writes its header and rounds. Strategies see
`learner.ranker` (the learner itself, or a hybrid's scoring side).

What a run keeps across rounds besides the labelled set is made in `execute`, before the first fit,
from the run seed: a cold-start seed set (`Protocol.seed_strategy`), the strategy's own state
(`Strategy.prepare`, e.g. Cluster-Margin's clusters) and SEALS's neighbour index
(`Protocol.candidates`), so a resumed run rebuilds them exactly.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path
from typing import Callable

import numpy as np

from embedcache.errors import CacheError, ConfigError
from embedcache.learners.base import Capability, ChecksFeatures, Learner, RankerCapabilities
from embedcache.metadata import LABEL, Metadata
from embedcache.metrics import evaluate, group_column
from embedcache.protocols import Protocol
from embedcache.records import (Acquisition, RoundRecord, Run, RunHeader, RunWriter, Source, SplitMetrics, Training,
                                check_identity, read_existing, read_run, record_path)
from embedcache.strategies import cold_start_spec, create_strategy, parse_strategy
from embedcache.strategies.candidates import KnnCandidates
from embedcache.versions import library_versions

#: on_round(record, n_rounds): called after each round is written.
OnRound = Callable[[RoundRecord, int], None]
_PURPOSES = {"seed-set": 1, "pool": 2, "ties": 3}


def _rng(seed: int, purpose: str, round_: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _PURPOSES[purpose], round_])


def _round_seed(seed: int, round_: int) -> int:
    return int(np.random.SeedSequence([seed, _PURPOSES["ties"], round_]).generate_state(1)[0])


def seed_set(labels: np.ndarray, rows: np.ndarray, size: int, balanced: bool, rng: np.random.Generator) -> np.ndarray:
    """`size` rows drawn from `rows`: uniformly, or class-balanced (equal counts per class present,
    the remainder spread over randomly chosen classes that have one more example to give)."""
    if size > len(rows):
        raise ConfigError(f"seed set of {size} needs more examples than the pool has ({len(rows)})")
    if not balanced:
        return np.sort(rng.choice(rows, size=size, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    base, extra = divmod(size, len(classes))
    short = [(int(c), int(n)) for c, n in zip(classes, counts) if n < base]
    if short:
        c, n = short[0]
        raise ConfigError(f"a class-balanced seed set of {size} needs {base} examples of each of {len(classes)} "
                          f"classes, but class {c} has only {n} in the pool; use a smaller `seed_size` or turn "
                          "`seed_balanced` off", param="seed_size")
    quota = dict.fromkeys(classes.tolist(), base)
    spare = [c for c, n in zip(classes.tolist(), counts) if n > base]
    if extra > len(spare):
        raise ConfigError(f"a class-balanced seed set of {size} cannot be drawn: too few classes with spare examples")
    for c in rng.choice(spare, size=extra, replace=False).tolist():
        quota[c] += 1
    chosen = [rng.choice(rows[labels == c], size=q, replace=False) for c, q in quota.items() if q]
    return np.sort(np.concatenate(chosen))


#: nonfinite_rows(rows): the subset of `rows` (sorted) whose features hold NaN or infinite values.
NonfiniteRows = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class Plan:
    """A protocol checked against the data: the rows every round uses, before any file is written."""

    protocol: Protocol
    metadata: Metadata
    pool: np.ndarray
    evaluation: dict[str, np.ndarray]
    evaluation_metadata: dict[str, Metadata]

    @classmethod
    def make(cls, protocol: Protocol, metadata: Metadata, nonfinite_rows: NonfiniteRows | None = None) -> "Plan":
        """Check the protocol against the data (and, given `nonfinite_rows`, that the features of every
        row the run uses are finite); raise a ConfigError or CacheError naming what is wrong."""
        pool = metadata.split_indices(protocol.pool_split)
        unknown = pool[metadata.label[pool] < 0]
        if len(unknown):
            raise ConfigError(f"{len(unknown)} example(s) of the pool split {protocol.pool_split!r} have no label "
                              f"(-1), e.g. id {metadata.ids[unknown[0]]!r}; AL needs the pool's labels to simulate "
                              "the annotator")
        classes = np.unique(metadata.label[pool])
        if len(classes) == 1:
            name = metadata.label_names[classes[0]] if metadata.label_names else str(classes[0])
            raise ConfigError(f"every example of the pool split {protocol.pool_split!r} has the label {name!r}: a run "
                              "needs at least two classes to learn from; check the labels (`embedcache info`)")
        needed = protocol.seed_size + protocol.budget
        if needed > len(pool):
            raise ConfigError(f"seed set {protocol.seed_size} + budget {protocol.budget} = {needed} examples, but the "
                              f"pool split {protocol.pool_split!r} has only {len(pool)}")
        evaluation = {}
        for split in protocol.eval_splits:
            rows = metadata.split_indices(split)
            if not len(rows):
                raise ConfigError(f"evaluation split {split!r} is empty")
            if (metadata.label[rows] < 0).any():
                raise ConfigError(f"evaluation split {split!r} has examples without labels")
            evaluation[split] = rows
        protocol.evaluation.check(metadata)
        plan = cls(protocol, metadata, pool, evaluation, {k: metadata.take(v) for k, v in evaluation.items()})
        if nonfinite_rows is not None:
            plan.require_finite(nonfinite_rows)
        return plan

    def require_finite(self, nonfinite_rows: NonfiniteRows) -> None:
        """Refuse features with NaN or infinite values in the pool or evaluation rows, naming their ids."""
        used = np.unique(np.concatenate([self.pool, *self.evaluation.values()]))
        bad = np.asarray(nonfinite_rows(used), dtype=np.int64)
        if len(bad):
            splits = ", ".join(dict.fromkeys([self.protocol.pool_split, *self.evaluation]))
            raise CacheError(f"{len(bad)} example(s) of the splits this run uses ({splits}) have NaN or infinite "
                             f"embedding values, e.g. ids {self.metadata.ids[bad[:5]].tolist()}; find them all with "
                             "`embedcache info --check CACHE` and extract those examples again")

    def header_groups(self) -> list[str]:
        """Columns whose values are recorded for every acquisition."""
        return [LABEL, *self.metadata.groups]

    def pool_counts(self) -> dict[str, dict[str, int]]:
        specs = dict.fromkeys([*self.header_groups(), *self.protocol.evaluation.groups])
        counts = {}
        for spec in specs:
            codes, names = group_column(self.metadata, spec)
            values = np.bincount(codes[self.pool], minlength=len(names))
            counts[spec] = {names[c]: int(values[c]) for c in np.flatnonzero(values)}
        return counts

    def group_values(self, rows: np.ndarray) -> dict[str, list[str]]:
        result = {}
        for column in self.header_groups():
            codes, names = self.metadata.column(column)
            result[column] = [names[c] for c in codes[rows]]
        return result


@dataclasses.dataclass
class PlannedRun:
    """One (strategy, seed) run checked against the data, and its record as it stands on disk
    (`existing`, None when there is none yet). Planning writes nothing."""

    plan: Plan
    strategy: str
    seed: int
    seed_rows: np.ndarray | None
    header: RunHeader
    path: Path
    existing: Run | None

    @property
    def complete(self) -> bool:
        return self.existing is not None and self.existing.complete


def plan_run(plan: Plan, learner: dict, strategy: str, seed: int, out_dir: str | Path, source: Source,
             ranker: RankerCapabilities) -> PlannedRun:
    """Check one run (its strategy and options, its seed set) and read its record if there is one: a
    record of another configuration is refused (RecordError naming the differences); nothing is
    written, so this works on read-only records. `learner` is the learner's `describe()`, `ranker`
    what the learner that ranks the pool offers: a strategy (or a cold-start seed strategy, or knn
    candidates) needing a capability it lacks is a ConfigError naming both. A seed set chosen by a
    cold-start strategy needs the learner's embeddings, so it is chosen when the run starts
    (`execute`), or read from the record being resumed (`seed_rows` None until then)."""
    spec = parse_strategy(strategy)  # an unknown name or option fails here
    strategy = spec.text
    ranker.require(create_strategy(strategy).requires, strategy)
    protocol, metadata = plan.protocol, plan.metadata
    recorded = protocol.to_dict()
    if protocol.seed_strategy is not None:
        recorded["seed_strategy"] = cold_start_spec(protocol.seed_strategy)  # one spelling per configuration
        ranker.require(create_strategy(protocol.seed_strategy).requires & {Capability.EMBED},
                       recorded["seed_strategy"], "seed strategy")
    if protocol.candidates is not None:
        ranker.require(frozenset({Capability.EMBED}), protocol.candidates, "candidate restriction")
    path = record_path(out_dir, strategy, seed)
    existing = read_existing(path)
    if protocol.seed_strategy is None:
        seed_rows = seed_set(metadata.label[plan.pool], plan.pool, protocol.seed_size, protocol.seed_balanced,
                             _rng(seed, "seed-set"))
    elif existing is not None:
        row_of = {i: r for r, i in enumerate(metadata.ids)}
        seed_rows = np.sort(np.array([row_of[i] for i in existing.header.seed_ids], dtype=np.int64))
    else:
        seed_rows = None
    header = RunHeader(
        mode=learner.get("learner", "unknown"), strategy=strategy, seed=int(seed), protocol=recorded,
        learner=learner, source=source if source.data else dataclasses.replace(source, data=metadata.fingerprint()),
        n_rounds=protocol.n_rounds, seed_ids=[] if seed_rows is None else metadata.ids[seed_rows].tolist(),
        seed_groups={} if seed_rows is None else plan.group_values(seed_rows), pool_counts=plan.pool_counts(),
        versions=library_versions(), strategy_options=dict(spec.options))
    if existing is not None:
        check_identity(path, existing.header, header)
    return PlannedRun(plan, strategy, seed, seed_rows, header, path, existing)


def run_al(learner: Learner, metadata: Metadata, protocol: Protocol, strategy: str, seed: int, out_dir: str | Path, *,
           source: Source, on_round: OnRound | None = None) -> Run:
    """Run (or resume, or skip if finished) one (strategy, seed) run and return its record.

    `source` describes the features: their `fingerprint` (cache recipe or backbone recipe), a
    `backbone` label for plots and `data` (which examples: the cache's or dataset's
    `Metadata.fingerprint`; the metadata's own when empty); it goes into the record header. A
    record is resumed or reused only if features, data, protocol, learner and strategy are all the
    same. Everything is checked (the features too, when the learner can check them:
    `ChecksFeatures`) before the first byte is written.
    """
    plan = Plan.make(protocol, metadata, learner.nonfinite_rows if isinstance(learner, ChecksFeatures) else None)
    planned = plan_run(plan, learner.describe(), strategy, seed, out_dir, source, RankerCapabilities.of(learner))
    return planned.existing if planned.complete else execute(planned, learner, on_round)


def execute(planned: PlannedRun, learner: Learner, on_round: OnRound | None = None) -> Run:
    """Run a planned run from where its record stands: prepare the learner (and choose a cold-start
    seed set), take the record's lock (refused while another process writes it), write the header if
    the record has none, then one line per round."""
    learner.prepare(planned.plan.pool, planned.plan.evaluation)
    if planned.seed_rows is None:
        planned = _cold_start(planned, learner)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with RunWriter(planned.path, dataclasses.replace(planned.header, created=created)) as writer:
        if writer.complete:  # finished by another process since it was planned
            return read_run(writer.path)
        _run_rounds(planned, learner, writer, on_round)
    return read_run(planned.path)


def _cold_start(planned: PlannedRun, learner: Learner) -> PlannedRun:
    """The run with its seed set chosen by the protocol's cold-start strategy from the embeddings of the
    pool before any fit (no labels read; the number of classes is known), seeded by the run seed."""
    plan = planned.plan
    embeddings = np.ascontiguousarray(learner.ranker.embed(plan.pool), dtype=np.float32)
    n_classes = len(np.unique(plan.metadata.label[plan.pool]))
    chooser = create_strategy(plan.protocol.seed_strategy)
    positions, _ = chooser.seed_set(embeddings, plan.protocol.seed_size, planned.seed, n_classes)
    rows = np.sort(plan.pool[np.asarray(positions, dtype=np.int64)])
    header = dataclasses.replace(planned.header, seed_ids=plan.metadata.ids[rows].tolist(),
                                 seed_groups=plan.group_values(rows))
    return dataclasses.replace(planned, seed_rows=rows, header=header)


class _KnnCandidates:
    """SEALS's candidate restriction over the pool, on the embeddings before the first fit: grown by the
    seed set and then by each round's batch, in that order (a resumed run replays the same growth)."""

    def __init__(self, learner: Learner, pool: np.ndarray, n_neighbors: int):
        self.pool = pool
        embeddings = np.ascontiguousarray(learner.ranker.embed(pool), dtype=np.float32)
        self.index = KnnCandidates(embeddings, np.arange(len(pool)), n_neighbors, device="auto")

    def add(self, rows: np.ndarray) -> None:
        self.index.add_labelled(np.searchsorted(self.pool, rows))

    def restrict(self, candidates: np.ndarray, k: int) -> np.ndarray:
        """The candidates among the neighbours; all of them while the neighbours are fewer than the batch."""
        near = np.intersect1d(self.pool[self.index.candidates()], candidates)
        return near if len(near) >= k else candidates


def _run_rounds(planned: PlannedRun, learner: Learner, writer: RunWriter, on_round: OnRound | None) -> None:
    plan, seed, seed_rows = planned.plan, planned.seed, planned.seed_rows
    protocol, metadata = plan.protocol, plan.metadata
    chooser = create_strategy(planned.strategy)
    labels = metadata.label
    schedule = protocol.schedule()
    row_of = {i: r for r, i in enumerate(metadata.ids)}
    labeled = [seed_rows] + [np.array([row_of[i] for i in r.acquired.ids], dtype=np.int64) for r in writer.rounds]
    chooser.prepare(learner.ranker, plan.pool, seed)  # before any fit: the same whether resumed or not
    knn = None
    if protocol.knn_candidates is not None:
        knn = _KnnCandidates(learner, plan.pool, protocol.knn_candidates)
        for rows in labeled:
            knn.add(rows)
    if learner.warm_start:  # rebuild the warm-start chain the finished rounds left
        for r in range(len(writer.rounds)):
            rows = np.concatenate(labeled[:r + 1])
            learner.fit(rows, labels[rows])
    is_labeled = np.zeros(len(metadata), dtype=bool)
    for rows in labeled:
        is_labeled[rows] = True
    for r in range(len(writer.rounds), protocol.n_rounds):
        started = time.perf_counter()
        rows = np.concatenate(labeled)
        learner.fit(rows, labels[rows])
        last = r == protocol.n_rounds - 1
        metrics = {}
        if r % protocol.eval_every == 0 or last:
            for split, eval_rows in plan.evaluation.items():
                predicted = learner.predict_proba(eval_rows).argmax(axis=1)
                metrics[split] = SplitMetrics.from_dict(evaluate(labels[eval_rows], predicted,
                                                                 plan.evaluation_metadata[split], protocol.evaluation),
                                                        f"metrics.{split}")
        training = Training.from_dict(dict(learner.training_))
        chosen, scores, pool_size = np.zeros(0, dtype=np.int64), np.zeros(0), 0
        if not last:
            candidates = plan.pool[~is_labeled[plan.pool]]
            if knn is not None:
                candidates = knn.restrict(candidates, schedule[r])
            if protocol.pool_size is not None and protocol.pool_size < len(candidates):
                candidates = np.sort(_rng(seed, "pool", r).choice(candidates, protocol.pool_size, replace=False))
            pool_size = len(candidates)
            chosen, scores = chooser.select(learner.ranker, candidates, rows, schedule[r], _round_seed(seed, r))
            is_labeled[chosen] = True
            labeled.append(np.asarray(chosen, dtype=np.int64))
            if knn is not None:
                knn.add(labeled[-1])
        acquired = Acquisition(metadata.ids[chosen].tolist(), np.asarray(scores, float).tolist(),
                               plan.group_values(chosen))
        record = RoundRecord(r, int(len(rows)), metrics, training, acquired, int(pool_size),
                             time.perf_counter() - started)
        writer.write_round(record)
        if on_round is not None:
            on_round(record, protocol.n_rounds)
