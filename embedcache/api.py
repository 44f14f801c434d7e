"""The notebook API, available as `embedcache.<name>`: open a cache, run a grid of strategies × seeds,
read runs, make a report, fit a head and score a pool (`embedcache.score_topk`, the fused scorer of
`embedcache.kernels`), in a few lines of Python:

    import embedcache

    embedcache.run("caches/wb-bitm.h5", ["least-confidence", "random"], seeds="0-15", protocol="waterbirds",
                   out="runs/wb-bitm/")
    summary = embedcache.report(embedcache.read_runs("runs/wb-bitm/"), "reports/wb/")

Each function is a thin layer over the library (`experiments.run_grid`, `records.read_runs`,
`analysis.report.write_report`, `learners.linear`, `kernels.score_topk`) and takes the same values as
the command of the same purpose. They import what they use when called, so `import embedcache` loads
no numpy, torch or h5py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    import numpy as np

    from embedcache.cache import EmbeddingCache
    from embedcache.learners.linear import LinearConfig
    from embedcache.records import Run

PathLike = str | Path


def open_cache(path: PathLike) -> "EmbeddingCache":
    """A complete cache, open for reading: `.metadata()` (ids, labels, splits, groups as numpy),
    `.embeddings(rows)`, `.iter_chunks()`. Close it, or use it in a `with` block."""
    from embedcache.cache import EmbeddingCache

    cache = EmbeddingCache(path)
    try:
        return cache.require_complete()
    except BaseException:
        cache.close()
        raise


def run(features: Any, strategies: str | Sequence[str], seeds: int | str | Iterable[int], out: PathLike, *,
        protocol: str = "custom", jobs: int = 1, learner: "LinearConfig | None" = None,
        **overrides: Any) -> list["Run"]:
    """Run every (strategy, seed) and return their records, as `embedcache al` does.

    features: a cache path (linear mode, with `learner`'s options), or an experiment object
    (`embedcache.experiments.LinearExperiment` or `FinetuneExperiment`). seeds: an int, a text such
    as "0-15" or "1,11", or integers. protocol: a preset name (waterbirds, treeperson, iwildcam,
    amazon, appendix-d, custom); `overrides` replace its fields by name (seed_size, per_round, budget,
    pool_size, pool_split, eval_splits, eval_every, groups, worst_group, metrics, percentiles).
    Records go to `out`, one per run; finished ones are read back, unfinished ones resumed.
    """
    from embedcache.errors import ConfigError
    from embedcache.experiments import LinearExperiment, parse_seeds, run_grid
    from embedcache.learners.linear import LinearConfig
    from embedcache.protocols import get_protocol

    preset = get_protocol(protocol)
    fields = {f.name for f in dataclasses.fields(preset)} | {f.name for f in dataclasses.fields(preset.evaluation)}
    unknown = sorted(set(overrides) - fields - {"name"})
    if unknown:
        raise ConfigError(f"unknown protocol field(s) {unknown}; known: {sorted(fields - {'name', 'evaluation'})}")
    if isinstance(features, (str, Path)):
        features = LinearExperiment(Path(features), learner or LinearConfig())
    elif learner is not None:
        raise ConfigError("learner= configures the linear head on a cache path; an experiment carries its own")
    if isinstance(seeds, str):
        seed_list = parse_seeds(seeds)
    else:
        seed_list = [seeds] if isinstance(seeds, int) else [int(s) for s in seeds]
    names = [strategies] if isinstance(strategies, str) else list(strategies)
    return run_grid(features, preset.replace(**overrides), names, seed_list, out, jobs=jobs)


def run_sweep(plan: PathLike, *, executor: str | None = None, address: str | None = None,
              jobs: int | None = None) -> list["Run"]:
    """Run every unfinished run of a sweep plan file and return all its records, as `embedcache
    sweep` does; `executor` ("local" or "ray"), `address` and `jobs` override the plan's [executor]."""
    from embedcache.sweep import load_plan, plan_executor, run_sweep as run_plan

    loaded = load_plan(plan)
    return run_plan(loaded, plan_executor(loaded, executor, address, jobs))


def read_runs(*paths: PathLike | Iterable[PathLike]) -> list["Run"]:
    """The run records in these files and folders (each a path or a list of paths; a sweep root
    stands for its cells' folders), sorted by folder and name: `run.header` (`records.RunHeader`),
    `run.rounds` (`records.RoundRecord`), and `run.curve(split, metric)` for plotting."""
    from embedcache.records import read_runs as read
    from embedcache.sweep_index import expand

    return read(expand([p for item in paths for p in ([item] if isinstance(item, (str, Path)) else item)]))


def report(runs: "Sequence[Run] | PathLike | Iterable[PathLike]", out: PathLike, **options: Any) -> dict:
    """Write `embedcache report`'s summary.md, summary.json, tables and figures for `runs` (records,
    or their files and folders) into `out`; returns the summary (the content of summary.json).
    `options` are `analysis.report.ReportConfig` fields: split, baseline, metric, groups,
    allow_mixed, max_panels, top, interval ("t" or "gaussian")."""
    from embedcache.analysis.report import ReportConfig, write_report
    from embedcache.errors import ConfigError
    from embedcache.records import Run

    known = {f.name for f in dataclasses.fields(ReportConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown report option(s) {unknown}; known: {sorted(known)}")
    if "groups" in options:
        options["groups"] = tuple(options["groups"])
    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not all(isinstance(r, Run) for r in runs):
        runs = read_runs(runs)
    return write_report(runs, out, ReportConfig(**options))


def fit_head(cache: PathLike, ids: Iterable[str], *, pool_split: str = "train",
             learner: "LinearConfig | None" = None) -> tuple["np.ndarray", "np.ndarray"]:
    """(W [D, C], b [C]), float32: the linear head an AL run fits on the labelled examples `ids` (their
    labels from the cache; features standardised with the `pool_split` rows' statistics, as in a
    run), over the classes among them. Give it to `score_topk` to rank a pool."""
    import numpy as np

    from embedcache.errors import ConfigError
    from embedcache.learners.linear import LinearLearner

    with open_cache(cache) as opened:
        meta = opened.metadata()
        features = opened.embeddings(dtype=np.float32)
    row_of = {i: r for r, i in enumerate(meta.ids)}
    ids = list(ids)
    missing = [i for i in ids if i not in row_of]
    if missing:
        raise ConfigError(f"{len(missing)} id(s) are not in {cache}, e.g. {missing[:3]}")
    rows = np.array([row_of[i] for i in ids], dtype=np.int64)
    labels = meta.label[rows]
    if len(np.unique(labels)) < 2 or (labels < 0).any():
        raise ConfigError(f"a head needs labelled examples of at least two classes; the {len(ids)} given have "
                          f"labels {sorted(set(labels.tolist()))}")
    head = LinearLearner(features, meta.num_classes, learner)
    head.prepare(meta.split_indices(pool_split), {})
    return head.fit(rows, labels).head
