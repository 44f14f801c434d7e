"""Many runs at once: (strategy × seed) grids over one set of features, in one or several processes.

An experiment knows how to open its data once per process (`open()` → `Session`) and to make a
fresh learner per run; `run_grid` runs every (strategy, seed) pair, each writing its own record,
skipping records that are already complete and resuming those that are not. `LinearExperiment`
reads a cache; `FinetuneExperiment` finetunes a backbone on a dataset (optionally ranking or
evaluating with a linear head on a cache instead, the hybrid modes).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from embedcache.cache import EmbeddingCache
from embedcache.errors import ConfigError
from embedcache.learners import distributed
from embedcache.learners.finetune import FinetuneOptions, Progress
from embedcache.learners.linear import LinearConfig, LinearLearner
from embedcache.loop import open_record, run_al
from embedcache.metadata import Metadata
from embedcache.protocols import Protocol
from embedcache.recipe import recipe_label
from embedcache.records import Run, read_run

#: on_round(strategy, seed, record, n_rounds): after each round (single-process runs only).
OnRound = Callable[[str, int, dict, int], None]
#: on_run(run, finished, total): called in the calling process as each run finishes.
OnRun = Callable[[Run, int, int], None]


@dataclasses.dataclass
class Session:
    """What every run of an experiment shares inside one process. `serve` is set on the ranks
    other than 0 of a torchrun launch: they serve rank 0's learner instead of running the grid.
    `close` is called once the grid is done."""

    metadata: Metadata
    source: dict
    make_learner: Callable[[], object]
    serve: Callable[[], None] | None = None
    close: Callable[[], None] = lambda: None


@dataclasses.dataclass(frozen=True)
class LinearExperiment:
    """Linear mode: a linear head on the embeddings of one complete cache."""

    cache: Path
    learner: LinearConfig = LinearConfig()

    def open(self) -> Session:
        with EmbeddingCache(self.cache) as cache:
            cache.require_complete()
            features = cache.embeddings(dtype=np.float32)
            metadata = cache.metadata()
            source = {"fingerprint": cache.fingerprint, "backbone": recipe_label(cache.recipe),
                      "data": cache.dataset.get("manifest_sha256") or metadata.fingerprint(),
                      "cache": str(Path(self.cache).resolve()), "dataset": cache.dataset}
        num_classes = metadata.num_classes
        return Session(metadata, source, lambda: LinearLearner(features, num_classes, self.learner))


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
            raise ConfigError(f"--cache {cache_path}: {len(missing)} of the dataset's {len(metadata)} ids are not in "
                              f"the cache, e.g. {missing[0]!r}; extract the cache from this dataset")
        rows = np.fromiter((row_of[i] for i in metadata.ids), dtype=np.int64, count=len(metadata))
        differ = np.flatnonzero(labels[rows] != metadata.label)
        if len(differ):
            k = differ[0]
            raise ConfigError(f"--cache {cache_path}: id {metadata.ids[k]!r} has label {labels[rows[k]]} in the cache "
                              f"but {metadata.label[k]} in the dataset; extract the cache from this dataset")
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
            raise ConfigError("--score-with linear / --mode linear with finetune scoring need --cache")

    def open(self) -> Session:
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
        source = {"fingerprint": start.fingerprint, "backbone": recipe_label(start.to_dict()),
                  "data": described["manifest_sha256"], "dataset": described}
        features = None
        if "linear" in (self.evaluate_with, self.score_with):
            features, source["linear"] = aligned_features(self.cache, metadata)
        linear_config, score_with = self.linear, self.score_with

        def make_learner():
            if features is None:
                return finetune  # no state carries from one run to the next
            linear = LinearLearner(features, metadata.num_classes, linear_config)
            pair = (finetune, linear) if score_with == "linear" else (linear, finetune)
            return HybridLearner(*pair, linear_features=source["linear"]["fingerprint"])

        follower = finetune.context.rank != 0
        return Session(metadata, source, make_learner, serve=finetune.serve if follower else None,
                       close=finetune.close)


def parse_seeds(text: str) -> list[int]:
    """"0-15" → 0..15; "1,11" → [1, 11]; "0-3,10" → [0, 1, 2, 3, 10]."""
    seeds: list[int] = []
    for part in text.split(","):
        start, dash, stop = part.strip().partition("-")
        if not start.isdigit() or (dash and not stop.isdigit()):
            raise ConfigError(f"--seeds {text!r}: expected numbers and ranges like 0-15 or 1,11")
        seeds += list(range(int(start), int(stop) + 1)) if dash else [int(start)]
    return sorted(dict.fromkeys(seeds))


def run_grid(experiment, protocol: Protocol, strategies: Sequence[str], seeds: Sequence[int], out_dir: str | Path,
             *, jobs: int = 1, on_round: OnRound | None = None, on_run: OnRun | None = None) -> list[Run]:
    """Run every (strategy, seed); with jobs > 1 in that many worker processes (per-round callbacks
    are then not available, `on_run` still is). Finished records are read back, not rerun."""
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    if jobs > 1 and distributed.world_size() > 1:
        raise ConfigError("--jobs > 1 cannot be combined with torchrun: the processes already share one run")
    tasks = [(s, seed) for s in strategies for seed in seeds]
    session = experiment.open()
    if session.serve is not None:  # a torchrun follower: rank 0 drives the runs, this process helps
        session.serve()
        session.close()
        return []
    try:
        finished: list[Run] = []
        todo = []
        for strategy, seed in tasks:  # a finished record counts only if its configuration is this one
            _, _, writer = open_record(session.make_learner(), session.metadata, protocol, strategy, seed, out_dir,
                                       session.source)
            if writer.complete:
                finished.append(read_run(writer.path))
                if on_run:
                    on_run(finished[-1], len(finished), len(tasks))
            else:
                todo.append((strategy, seed))
        if jobs == 1 or len(todo) <= 1:
            for strategy, seed in todo:
                report = None if on_round is None else (
                    lambda record, n_rounds, s=strategy, q=seed: on_round(s, q, record, n_rounds))
                finished.append(run_al(session.make_learner(), session.metadata, protocol, strategy, seed, out_dir,
                                       source=session.source, on_round=report))
                if on_run:
                    on_run(finished[-1], len(finished), len(tasks))
            return finished
    finally:
        session.close()
    context = multiprocessing.get_context("spawn")  # fork after torch/OpenMP start-up can deadlock
    with concurrent.futures.ProcessPoolExecutor(min(jobs, len(todo)), mp_context=context,
                                                initializer=_open_worker, initargs=(experiment,)) as pool:
        futures = [pool.submit(_run_in_worker, protocol, strategy, seed, str(out_dir)) for strategy, seed in todo]
        for future in concurrent.futures.as_completed(futures):
            finished.append(read_run(future.result()))
            if on_run:
                on_run(finished[-1], len(finished), len(tasks))
    return finished


_worker_session: Session | None = None


def _open_worker(experiment) -> None:
    import torch

    global _worker_session
    torch.set_num_threads(1)  # the processes share the cores
    _worker_session = experiment.open()


def _run_in_worker(protocol: Protocol, strategy: str, seed: int, out_dir: str) -> str:
    session = _worker_session
    run = run_al(session.make_learner(), session.metadata, protocol, strategy, seed, out_dir, source=session.source)
    return str(run.path)
