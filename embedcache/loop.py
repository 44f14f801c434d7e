"""The active-learning loop. It drives any learner of the contract in `embedcache.learners.base`
and never knows whether that is a linear head on cached embeddings or a finetuned network.

Round r: fit on the labelled set, evaluate the requested splits, measure the stopping signals on
the run's stop set (`embedcache.stopping.measure`: the model's predictions there, no labels), then
(unless the budget is spent) score the unlabelled pool (a fresh random subsample of it each round
when the protocol has a `pool_size`) and acquire the next batch. Round 0 trains on the seed set.
Every random choice (seed set, stop set, pool subsample, tie-breaks, the random strategy) is drawn
from the run seed and the round number, so a run is reproducible, and a resumed run continues
exactly as an uninterrupted one.

A run is planned before it is executed: `Plan.make` checks the protocol against the data (and the
features' finiteness), `plan_run` the strategy (a registered name, and one whose `requires` the
learner that ranks the pool offers), the seed set and any record already on disk, all without
writing; `execute` then takes the record's lock and writes its header and rounds. Strategies see
`learner.ranker` (the learner itself, or a hybrid's scoring side). A run between rounds is a
`RunState`, whose `finish_round` makes and writes each round's record: the batched engine
(`embedcache.engine`) steps runs through the same `RunState`.

What a run keeps across rounds besides the labelled set is made before the first fit, from the run
seed: a cold-start seed set (`Protocol.seed_strategy`, in `execute`), the strategy's own state
(`Strategy.prepare`, e.g. Cluster-Margin's clusters) and SEALS's neighbour index
(`Protocol.candidates`) in `RunState.start`, so a resumed run rebuilds them exactly.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path
from typing import Callable

import numpy as np

from embedcache.errors import CacheError, ConfigError
from embedcache.faults import crash_point
from embedcache.learners.base import Capability, ChecksFeatures, Learner, RankerCapabilities
from embedcache.metadata import LABEL, Metadata
from embedcache.metrics import evaluate, group_column
from embedcache.protocols import Protocol
from embedcache.records import (Acquisition, RoundRecord, Run, RunHeader, RunWriter, Source, SplitMetrics, Training,
                                check_identity, read_existing, read_run, record_path)
from embedcache.stopping import measure
from embedcache.strategies import cold_start_spec, create_strategy, parse_strategy
from embedcache.strategies.candidates import KnnCandidates
from embedcache.versions import library_versions

#: on_round(record, n_rounds): called after each round is written.
OnRound = Callable[[RoundRecord, int], None]
_PURPOSES = {"seed-set": 1, "pool": 2, "ties": 3, "stop-set": 4}
#: The stop set's name among the row sets `Learner.prepare` is told the loop predicts every round.
STOP_SET = "(stop set)"


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


def stop_set(pool: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The run's stop set: `size` pool rows (all, if the pool is smaller) drawn from the run seed, sorted.
    Label-free and fixed for the whole run: the stopping signals compare successive models there."""
    if not size or size >= len(pool):
        return np.sort(pool[:size])
    return np.sort(_rng(seed, "stop-set").choice(pool, size=size, replace=False))


def cold_start_protocol(protocol: Protocol) -> Protocol:
    """The protocol with its cold-start seed strategy checked (`cold_start_spec`) and in the canonical
    spelling the record keeps."""
    if protocol.seed_strategy is None:
        return protocol
    return dataclasses.replace(protocol, seed_strategy=cold_start_spec(protocol.seed_strategy))


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
        protocol = cold_start_protocol(protocol)
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
    if protocol.seed_strategy is not None:  # in its canonical spelling: Plan.make
        ranker.require(create_strategy(protocol.seed_strategy).requires & {Capability.EMBED},
                       protocol.seed_strategy, "seed strategy")
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
        mode=learner.get("learner", "unknown"), strategy=strategy, seed=int(seed), protocol=protocol.to_dict(),
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


class RunState:
    """One run between rounds: the rows labelled so far and the record it appends to. The single-run
    loop and the batched engine (`embedcache.engine`) both step a run through it, so a round's
    record is made in one place (`finish_round`) whichever path fitted, evaluated and ranked."""

    def __init__(self, planned: PlannedRun, writer: RunWriter):
        self.planned, self.writer = planned, writer
        self.plan, self.seed = planned.plan, planned.seed
        self.protocol = self.plan.protocol
        self.chooser = create_strategy(planned.strategy)
        self.schedule = self.protocol.schedule()
        metadata = self.plan.metadata
        row_of = {i: r for r, i in enumerate(metadata.ids)} if writer.rounds else {}  # only to resume
        self.labeled = [planned.seed_rows] + [np.array([row_of[i] for i in r.acquired.ids], dtype=np.int64)
                                              for r in writer.rounds]
        self.is_labeled = np.zeros(len(metadata), dtype=bool)
        for rows in self.labeled:
            self.is_labeled[rows] = True
        self.round = len(writer.rounds)
        self.stop_rows = stop_set(self.plan.pool, writer.header.stop_set_size, self.seed)  # none in older records
        self.previous: np.ndarray | None = None  # the last round's predicted classes on the stop set
        self.knn: _KnnCandidates | None = None

    @property
    def done(self) -> bool:
        return self.round >= self.protocol.n_rounds

    @property
    def last(self) -> bool:
        return self.round == self.protocol.n_rounds - 1

    @property
    def evaluates(self) -> bool:
        """Whether this round evaluates the protocol's splits."""
        return self.round % self.protocol.eval_every == 0 or self.last

    @property
    def k(self) -> int:
        return self.schedule[self.round]

    @property
    def tie_seed(self) -> int:
        return _round_seed(self.seed, self.round)

    def evaluation(self) -> dict[str, np.ndarray]:
        """The rows the run predicts every round: the evaluation splits and the stop set."""
        evaluation = self.plan.evaluation
        return {**evaluation, STOP_SET: self.stop_rows} if len(self.stop_rows) else evaluation

    def start(self, learner: Learner) -> None:
        """Before the first round this process runs (the learner prepared): the strategy's per-run state and the
        SEALS candidate index, made before any fit so they are the same whether resumed or not; then rebuild
        what the finished rounds left, so a resumed run continues as an uninterrupted one: the warm-start chain,
        and the last finished round's predictions on the stop set."""
        self.chooser.prepare(learner.ranker, self.plan.pool, self.seed)
        if self.protocol.knn_candidates is not None:
            self.knn = _KnnCandidates(learner, self.plan.pool, self.protocol.knn_candidates)
            for rows in self.labeled:
                self.knn.add(rows)
        labels = self.plan.metadata.label
        if learner.warm_start:
            for r in range(self.round):
                rows = np.concatenate(self.labeled[:r + 1])
                learner.fit(rows, labels[rows])
        if len(self.stop_rows) and self.round:
            if not learner.warm_start:  # the last finished round's model, fitted again
                rows = np.concatenate(self.labeled[:self.round])
                learner.fit(rows, labels[rows])
            self.previous = learner.predict_proba(self.stop_rows).argmax(axis=1)

    def stop_set_proba(self, learner: Learner) -> np.ndarray | None:
        """The fitted learner's probabilities on the stop set (None when the run has none)."""
        return learner.predict_proba(self.stop_rows) if len(self.stop_rows) else None

    def labelled_rows(self) -> np.ndarray:
        """The rows labelled so far: the seed set, then each round's acquisitions in order."""
        return np.concatenate(self.labeled)

    def fit(self, learner: Learner) -> np.ndarray:
        """Fit `learner` on the rows labelled so far; those rows."""
        rows = self.labelled_rows()
        learner.fit(rows, self.plan.metadata.label[rows])
        return rows

    def candidates(self) -> np.ndarray | None:
        """The unlabelled rows this round may acquire from (a fresh subsample when the protocol has a
        `pool_size`); None in the last round, which acquires nothing."""
        if self.last:
            return None
        plan = self.plan
        candidates = plan.pool[~self.is_labeled[plan.pool]]
        if self.knn is not None:
            candidates = self.knn.restrict(candidates, self.k)
        if self.protocol.pool_size is not None and self.protocol.pool_size < len(candidates):
            candidates = np.sort(_rng(self.seed, "pool", self.round).choice(candidates, self.protocol.pool_size,
                                                                          replace=False))
        return candidates

    def select(self, learner: Learner, candidates: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The strategy's choice among `candidates` (`rows`: the labelled rows the learner was fitted on)."""
        return self.chooser.select(learner.ranker, candidates, rows, self.k, self.tie_seed)

    def finish_round(self, learner: Learner, rows: np.ndarray, predicted: dict[str, np.ndarray],
                     stop_proba: np.ndarray | None, candidates: np.ndarray | None, chosen: np.ndarray,
                     scores: np.ndarray, seconds: float) -> RoundRecord:
        """Turn a fitted learner's outputs into this round's record and write it: `predicted` the class
        predicted for each evaluation split's rows (empty when the round does not evaluate), `stop_proba`
        its probabilities on the stop set (`stop_set_proba`), `chosen` and `scores` the acquisition among
        `candidates` (None in the last round); `seconds` the round's time."""
        plan, protocol, metadata = self.plan, self.protocol, self.plan.metadata
        labels = metadata.label
        metrics = {split: SplitMetrics.from_dict(evaluate(labels[plan.evaluation[split]], predicted[split],
                                                          plan.evaluation_metadata[split], protocol.evaluation),
                                                 f"metrics.{split}")
                   for split in plan.evaluation if split in predicted}
        training = Training.from_dict(dict(learner.training_))
        stopping = None
        if stop_proba is not None:
            stopping, self.previous = measure(stop_proba, self.previous)
        chosen = np.asarray(chosen, dtype=np.int64)
        if candidates is not None:
            self.is_labeled[chosen] = True
            self.labeled.append(chosen)
            if self.knn is not None:
                self.knn.add(chosen)
        acquired = Acquisition(metadata.ids[chosen].tolist(), np.asarray(scores, float).tolist(),
                               plan.group_values(chosen))
        record = RoundRecord(self.round, int(len(rows)), metrics, training, acquired,
                             0 if candidates is None else int(len(candidates)), seconds, stopping)
        self.writer.write_round(record)
        self.round += 1
        crash_point("loop.round-written")
        return record


def predicted_classes(learner: Learner, plan: Plan) -> dict[str, np.ndarray]:
    """The class `learner` predicts for every row of each evaluation split."""
    return {split: learner.predict_proba(rows).argmax(axis=1) for split, rows in plan.evaluation.items()}


def _run_rounds(planned: PlannedRun, learner: Learner, writer: RunWriter, on_round: OnRound | None) -> None:
    state = RunState(planned, writer)
    learner.prepare(planned.plan.pool, state.evaluation())
    state.start(learner)
    while not state.done:
        started = time.perf_counter()
        rows = state.fit(learner)
        measuring = time.perf_counter()
        predicted = predicted_classes(learner, state.plan) if state.evaluates else {}
        stop_proba = state.stop_set_proba(learner)
        measured = time.perf_counter() - measuring  # the simulation's own measuring: not part of a round's cost
        candidates = state.candidates()
        chosen, scores = (np.zeros(0, dtype=np.int64), np.zeros(0)) if candidates is None else \
            state.select(learner, candidates, rows)
        record = state.finish_round(learner, rows, predicted, stop_proba, candidates, chosen, scores,
                                    time.perf_counter() - started - measured)
        if on_round is not None:
            on_round(record, state.protocol.n_rounds)
