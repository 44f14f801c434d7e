"""Many runs at once: (strategy × seed) grids over one set of features, in one or several processes.

An experiment knows how to open its data once per process (`open()` → `Session`) and to make a
fresh learner per run; `run_grid` runs every (strategy, seed) pair, each writing its own record,
skipping records that are already complete and resuming those that are not. `LinearExperiment`
reads a cache; `FinetuneExperiment` finetunes a backbone on a dataset (optionally ranking or
evaluating with a linear head on a cache instead, the hybrid modes).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from embedcache.cache import EmbeddingCache
from embedcache.engine import OnBatchRound, run_batch
from embedcache.errors import CacheError, ConfigError
from embedcache.executors import Executor, LocalProcesses, RunSpec, run_units, work_units
from embedcache.faults import crash_point
from embedcache.learners import distributed
from embedcache.learners.base import Learner, RankerCapabilities
from embedcache.learners.finetune import FinetuneOptions, Progress
from embedcache.learners.linear import LinearConfig, LinearLearner
from embedcache.loop import NonfiniteRows, Plan, PlannedRun, execute, plan_run
from embedcache.metadata import Metadata
from embedcache.protocols import Protocol
from embedcache.recipe import recipe_label
from embedcache.records import RecordLock, RoundRecord, Run, Source
from embedcache.strategies import create_strategy

#: on_round(strategy, seed, record, n_rounds): after each round (single-process runs only).
OnRound = Callable[[str, int, RoundRecord, int], None]
#: on_run(run, finished, total): called in the calling process as each run finishes.
OnRun = Callable[[Run, int, int], None]


@dataclasses.dataclass
class Session:
    """What every run of an experiment shares inside one process: the metadata, the features'
    description (`source`), the learner's (`learner_description`, its `describe()`), what the
    learner that ranks the pool offers (`ranker`: the strategies are checked against it),
    `make_learner` (None in a session opened without learners), and `nonfinite_rows` (rows whose
    features hold NaN/inf; None when the experiment holds no such numbers). `serve` is set on the
    ranks other than 0 of a torchrun launch: they serve rank 0's learner instead of running the
    grid. `close` is called once the grid is done. `run_batch` (set where the batched engine applies:
    linear mode) runs up to `batch_size` planned runs together (`embedcache.engine.run_batch`)."""

    metadata: Metadata
    source: Source
    learner_description: dict
    ranker: RankerCapabilities
    make_learner: Callable[[], Learner] | None
    nonfinite_rows: NonfiniteRows | None = None
    serve: Callable[[], None] | None = None
    close: Callable[[], None] = lambda: None
    run_batch: Callable[[Sequence[PlannedRun], OnBatchRound | None], list[Run]] | None = None
    batch_size: int = 1

    def run_all(self, runs: Sequence[PlannedRun], on_round: OnBatchRound | None = None,
                done: Callable[[Run], None] = lambda run: None) -> None:
        """Run every planned run in this process, `done(run)` as each finishes: `batch_size` at a time
        through `run_batch` where the session has it, else one after another through the single-run loop.
        Runs whose seed set a cold-start strategy still has to choose go through the single-run loop."""
        alone = runs
        if self.run_batch is not None and self.batch_size > 1:
            together = [run for run in runs if run.seed_rows is not None]
            alone = [run for run in runs if run.seed_rows is None]
            for start in range(0, len(together), self.batch_size):
                for run in self.run_batch(together[start:start + self.batch_size], on_round):
                    done(run)
        for run in alone:
            report = None if on_round is None else (lambda record, n_rounds, r=run: on_round(r, record, n_rounds))
            done(execute(run, self.make_learner(), report))


def _nonfinite(blocks: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The rows, from (rows, values) blocks, whose values hold NaN or infinities."""
    return np.concatenate([np.zeros(0, np.int64), *(rows[~np.isfinite(values).all(axis=1)] for rows, values in blocks)])


def _blocks(features: np.ndarray, rows: np.ndarray, size: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(rows), size):
        part = rows[start:start + size]
        yield part, features[part]


def _nonfinite_in_cache(path: Path, rows: np.ndarray) -> np.ndarray:
    """`_nonfinite` over a cache's rows read a block at a time (bounded memory)."""
    with EmbeddingCache(path) as cache:
        return _nonfinite(cache.iter_chunks(rows))


#: Runs the batched engine steps together by default (memory: a few MB of solver state per run).
BATCH = 64


@dataclasses.dataclass(frozen=True)
class LinearExperiment:
    """Linear mode: a linear head on the embeddings of one complete cache. `batch`: how many runs of a
    grid or work unit the batched engine steps together (`embedcache.engine`); 1 runs them one by one
    through the single-run loop. `in_memory`: load the features into memory as float32 (fastest), or,
    False, leave them on disk and stream the pool from the cache every round (pools larger than memory:
    only the labelled rows, the evaluation rows and the statistics are held; records agree with the
    in-memory ones up to ties)."""

    cache: Path
    learner: LinearConfig = LinearConfig()
    batch: int = BATCH
    in_memory: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"must be a positive integer (1 runs one run at a time), got {self.batch!r}",
                              param="batch")

    def open(self, learners: bool = True) -> Session:
        """The cache's metadata, and its features in memory for the learners; without `learners`
        (the parent of worker processes), or not `in_memory`, the features stay on disk and are checked
        a block at a time (and streamed by the learners)."""
        with EmbeddingCache(self.cache) as cache:
            cache.require_complete()
            metadata = cache.metadata()
            source = Source(cache.fingerprint, cache.dataset.get("manifest_sha256") or metadata.fingerprint(),
                            recipe_label(cache.recipe), str(Path(self.cache).resolve()), cache.dataset)
            features = cache.embeddings(dtype=np.float32) if learners and self.in_memory else None
        ranker = RankerCapabilities.of_class(LinearLearner)
        on_disk = functools.partial(_nonfinite_in_cache, Path(self.cache))
        if not learners:
            return Session(metadata, source, self.learner.describe(), ranker, None, on_disk)
        num_classes, config = metadata.num_classes, self.learner
        streamed = EmbeddingCache(self.cache) if features is None else None

        def make_learner():
            return LinearLearner(features if streamed is None else streamed, num_classes, config)

        return Session(metadata, source, config.describe(), ranker, make_learner,
                       on_disk if streamed is not None else (lambda rows: _nonfinite(_blocks(features, rows))),
                       close=streamed.close if streamed is not None else (lambda: None),
                       run_batch=lambda runs, on_round: run_batch(runs, make_learner, on_round), batch_size=self.batch)


def aligned_features(cache_path: str | Path, metadata: Metadata) -> tuple[np.ndarray, dict]:
    """The embeddings of a complete cache in the row order of `metadata` (a dataset's), and its
    description for the run header. Every dataset id must be in the cache with the same label."""
    with EmbeddingCache(cache_path) as cache:
        cache.require_complete()
        ids = cache.metadata().ids
        labels = cache.metadata().label
        row_of = {i: r for r, i in enumerate(ids)}
        missing = [i for i in metadata.ids if i not in row_of]
        if missing:
            raise CacheError(f"{cache_path}: {len(missing)} of the dataset's {len(metadata)} ids are not in "
                             f"the cache, e.g. {missing[0]!r}; extract the cache from this dataset", param="cache")
        rows = np.fromiter((row_of[i] for i in metadata.ids), dtype=np.int64, count=len(metadata))
        differ = np.flatnonzero(labels[rows] != metadata.label)
        if len(differ):
            k = differ[0]
            raise CacheError(f"{cache_path}: id {metadata.ids[k]!r} has label {labels[rows[k]]} in the cache "
                             f"but {metadata.label[k]} in the dataset; extract the cache from this dataset",
                             param="cache")
        if np.array_equal(rows, np.arange(len(ids))):
            features = cache.embeddings(dtype=np.float32)
        else:
            ordered = np.sort(rows)
            features = cache.embeddings(ordered, np.float32)[np.searchsorted(ordered, rows)]
        about = {"cache": str(Path(cache_path).resolve()), "fingerprint": cache.fingerprint,
                 "backbone": recipe_label(cache.recipe)}
    return features, about


@dataclasses.dataclass(frozen=True)
class FinetuneExperiment:
    """Finetune mode: a backbone finetuned with the paper's recipe on a dataset, every round.

    The recipe is the paper's for the dataset's modality (BiT for images, RoBERTa's for text), with
    `recipe_options` overriding fields from strings (the CLI's --recipe KEY=VALUE).
    evaluate_with / score_with: "finetune" or "linear" — the hybrid modes fit a linear head on
    `cache` (a cache of the same dataset) too, and let it evaluate or rank.
    `progress` (one process only) sees training steps and scored examples.
    """

    dataset: str
    root: Path
    backbone: str
    dataset_options: dict = dataclasses.field(default_factory=dict)
    weights: str = "pretrained"
    init_seed: int = 0
    max_length: int | None = None
    pooling: str | None = None
    recipe_options: dict = dataclasses.field(default_factory=dict)
    options: FinetuneOptions = FinetuneOptions()
    evaluate_with: str = "finetune"
    score_with: str = "finetune"
    cache: Path | None = None
    linear: LinearConfig = LinearConfig()
    progress: Progress | None = None

    def __post_init__(self) -> None:
        roles = (self.evaluate_with, self.score_with)
        if not set(roles) <= {"finetune", "linear"} or roles == ("linear", "linear"):
            raise ConfigError(f"a finetune experiment evaluates and scores with finetune or linear, got {roles}")
        if "linear" in roles and self.cache is None:
            raise ConfigError("a linear side (scoring or evaluating with the linear head) needs a cache",
                              param="cache")

    def open(self, learners: bool = True) -> Session:
        """The dataset, backbone and learner (always made, `learners` notwithstanding: the learner's
        description names the backbone's starting point)."""
        from embedcache.backbones import create_backbone
        from embedcache.datasets import create_dataset
        from embedcache.learners.finetune import FinetuneLearner, default_recipe
        from embedcache.learners.hybrid import HybridLearner

        data = create_dataset(self.dataset, self.root, **self.dataset_options)
        backbone = create_backbone(self.backbone, weights=self.weights, seed=self.init_seed,
                                   max_length=self.max_length, pooling=self.pooling)
        recipe = default_recipe(data.modality, self.recipe_options)
        metadata = data.metadata
        finetune = FinetuneLearner(data, backbone, metadata.num_classes, recipe, self.options, self.progress)
        start = finetune.starting_point()
        described = data.describe()
        source = Source(start.fingerprint, described["manifest_sha256"], recipe_label(start.to_dict()),
                        dataset=described)
        features = None
        if "linear" in (self.evaluate_with, self.score_with):
            features, linear_side = aligned_features(self.cache, metadata)
            source = dataclasses.replace(source, linear=linear_side)
        linear_config, score_with = self.linear, self.score_with

        def make_learner():
            if features is None:
                return finetune  # no state carries from one run to the next
            linear = LinearLearner(features, metadata.num_classes, linear_config)
            pair = (finetune, linear) if score_with == "linear" else (linear, finetune)
            return HybridLearner(*pair, linear_features=source.linear["fingerprint"])

        follower = finetune.context.rank != 0
        nonfinite = None if features is None else (lambda rows: _nonfinite(_blocks(features, rows)))
        learner = make_learner()
        return Session(metadata, source, learner.describe(), RankerCapabilities.of(learner), make_learner, nonfinite,
                       serve=finetune.serve if follower else None, close=finetune.close)


def parse_seeds(text: str) -> list[int]:
    """"0-15" → 0..15; "1,11" → [1, 11]; "0-3,10" → [0, 1, 2, 3, 10]."""
    seeds: list[int] = []
    for part in text.split(","):
        start, dash, stop = part.strip().partition("-")
        if not start.isdigit() or (dash and not stop.isdigit()):
            raise ConfigError(f"{text!r}: expected numbers and ranges like 0-15 or 1,11", param="seeds")
        if dash and int(stop) < int(start):
            raise ConfigError(f"{text!r}: the range {part.strip()} runs backwards; write {stop}-{start}",
                              param="seeds")
        seeds += list(range(int(start), int(stop) + 1)) if dash else [int(start)]
    return sorted(dict.fromkeys(seeds))


def plan_runs(session: Session, protocol: Protocol, strategies: Sequence[str], seeds: Sequence[int],
              out_dir: str | Path) -> list[PlannedRun]:
    """Every (strategy, seed) run checked against the session's data and its record on disk; writes nothing."""
    plan = Plan.make(protocol, session.metadata, session.nonfinite_rows)
    return [plan_run(plan, session.learner_description, strategy, seed, out_dir, session.source, session.ranker)
            for strategy in strategies for seed in seeds]


def run_grid(experiment, protocol: Protocol, strategies: Sequence[str], seeds: Sequence[int], out_dir: str | Path,
             *, jobs: int = 1, executor: Executor | None = None, on_round: OnRound | None = None,
             on_run: OnRun | None = None) -> list[Run]:
    """Run every (strategy, seed); with jobs > 1 in that many worker processes, or on `executor`
    (e.g. a Ray cluster; `executors`), where per-round callbacks are not available (`on_run`
    still is). Finished records are read back, not rerun.

    Every run is checked first (options, protocol against the data, features, strategies, records
    of another configuration, records another process writes, a folder that cannot be written),
    so a bad grid fails before its first byte is written; a record's header is written when its
    run starts. With workers this process never loads the features: the workers do (local ones end
    with it, however it ends).
    """
    if jobs < 1:
        raise ConfigError("must be at least 1", param="jobs")
    if executor is not None and jobs > 1:
        raise ConfigError("sets local worker processes: give it or an executor, not both", param="jobs")
    if (jobs > 1 or executor is not None) and distributed.world_size() > 1:
        raise ConfigError("more than 1 (or an executor) cannot be combined with torchrun: the processes already share "
                          "one run", param="jobs")
    if not strategies or not seeds:
        raise ConfigError("no runs to make: `strategies` and `seeds` must each name at least one")
    for strategy in strategies:
        create_strategy(strategy)  # every name, before anything is opened (capabilities: when each run is planned)
    finished: list[Run] = []
    total = len(strategies) * len(seeds)

    def done(run: Run) -> None:
        finished.append(run)
        if on_run:
            on_run(run, len(finished), total)
        crash_point("grid.run-finished")

    parallel = jobs > 1 or executor is not None
    session = experiment.open(learners=not parallel)
    if session.serve is not None:  # a torchrun follower: rank 0 drives the runs, this process helps
        session.serve()
        session.close()
        return []
    try:
        runs = plan_runs(session, protocol, strategies, seeds, out_dir)
        todo = [run for run in runs if not run.complete]
        for run in todo:  # a read-only folder or a record another process writes: refused before any write
            with RecordLock(run.path):
                pass
        for run in runs:
            if run.complete:
                done(run.existing)
        if not parallel:
            report = None if on_round is None else (
                lambda run, record, n_rounds: on_round(run.strategy, run.seed, record, n_rounds))
            session.run_all(todo, report, done)
            return finished
        left = [RunSpec(protocol, run.strategy, run.seed, str(out_dir)) for run in todo]
    finally:
        session.close()
    del session, runs, todo  # the workers hold what they need; this process keeps nothing large
    if left:
        executor = executor or LocalProcesses(jobs)
        run_units(executor, work_units([(experiment, left)], executor.slots()), done)
    return finished
