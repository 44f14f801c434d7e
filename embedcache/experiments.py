"""Many runs at once: (strategy × seed) grids over one set of features, in one or several processes.

An experiment knows how to open its data once per process (`open()` → `Session`) and to make a
fresh learner per run; `run_grid` runs every (strategy, seed) pair, each writing its own record,
skipping records that are already complete and resuming those that are not.
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
from embedcache.learners.linear import LinearConfig, LinearLearner
from embedcache.loop import run_al
from embedcache.metadata import Metadata
from embedcache.protocols import Protocol
from embedcache.recipe import recipe_label
from embedcache.records import Run, read_run, record_path

#: on_round(strategy, seed, record, n_rounds): after each round (single-process runs only).
OnRound = Callable[[str, int, dict, int], None]
#: on_run(run, finished, total): called in the calling process as each run finishes.
OnRun = Callable[[Run, int, int], None]


@dataclasses.dataclass
class Session:
    """What every run of an experiment shares inside one process."""

    metadata: Metadata
    source: dict
    make_learner: Callable[[], object]


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
    tasks = [(s, seed) for s in strategies for seed in seeds]
    finished: list[Run] = []
    todo = []
    for strategy, seed in tasks:
        path = record_path(out_dir, strategy, seed)
        run = read_run(path) if path.exists() else None
        if run is not None and run.complete:
            finished.append(run)
        else:
            todo.append((strategy, seed))
    for run in finished:
        if on_run:
            on_run(run, len(finished), len(tasks))
    if not todo:
        return finished
    if jobs == 1 or len(todo) == 1:
        session = experiment.open()
        for strategy, seed in todo:
            report = None if on_round is None else (
                lambda record, n_rounds, s=strategy, q=seed: on_round(s, q, record, n_rounds))
            run = run_al(session.make_learner(), session.metadata, protocol, strategy, seed, out_dir,
                         source=session.source, on_round=report)
            finished.append(run)
            if on_run:
                on_run(run, len(finished), len(tasks))
        return finished
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
