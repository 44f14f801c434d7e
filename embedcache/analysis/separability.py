"""How linearly separable the task's attributes are in a feature space (paper Fig. 7).

For each cache, a linear probe (the shared `LinearLearner`, the same head AL trains) predicts
the target (the label), each group attribute, and each target × group combination (the paper's
4 classes of bird × background); it is fitted on one split and scored on another, per class
and overall. Defaults: train on "train", test on "val", each split rebalanced to equal counts
per class by subsampling every class to the rarest one's count (seeded), so chance is
1 / classes and a probe cannot score by predicting the majority. With the same split on both
sides, its examples are halved per class (seeded) into train and test parts first.
Examples with an unknown label (-1) are left out of probes that involve the label.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from embedcache.errors import ConfigError, EmbedcacheError
from embedcache.metadata import LABEL, Metadata
from embedcache.metrics import COMBINE, group_column
from embedcache.outputs import OutputFolder, write_csv, write_json

#: progress(done, total), called after each probe.
Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """train_split / test_split: where probes are fitted and scored; balance: subsample every class
    to the rarest one's count in each split; max_per_class: cap per class and split (large
    datasets); seed: the subsampling draws; C: the probe's inverse L2 strength."""

    train_split: str = "train"
    test_split: str = "val"
    balance: bool = True
    max_per_class: int | None = None
    seed: int = 0
    C: float = 1.0

    def __post_init__(self) -> None:
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ConfigError("must be at least 1", param="max_per_class")


@dataclasses.dataclass
class ProbeResult:
    """One probe on one cache: per class (in `classes` order) the train and test counts and the
    held-out accuracy (NaN where the test part has none), overall held-out accuracy, and chance
    (the share of the test part's largest class: 1 / classes when balanced)."""

    cache: str
    backbone: str
    fingerprint: str
    target: str
    classes: tuple[str, ...]
    n_train: np.ndarray
    n_test: np.ndarray
    class_accuracy: np.ndarray
    accuracy: float
    chance: float

    def rows(self) -> list[dict]:
        """One dict per class plus an "(all)" row, for CSV tables."""
        common = {"cache": self.cache, "backbone": self.backbone, "target": self.target}
        rows = [{**common, "class": c, "n_train": int(a), "n_test": int(b), "accuracy": float(acc)}
                for c, a, b, acc in zip(self.classes, self.n_train, self.n_test, self.class_accuracy)]
        return rows + [{**common, "class": "(all)", "n_train": int(self.n_train.sum()),
                        "n_test": int(self.n_test.sum()), "accuracy": self.accuracy, "chance": self.chance}]

    def to_dict(self) -> dict:
        return {"cache": self.cache, "backbone": self.backbone, "fingerprint": self.fingerprint,
                "target": self.target, "accuracy": self.accuracy, "chance": self.chance,
                "classes": {c: {"n_train": int(a), "n_test": int(b), "accuracy": float(acc)}
                            for c, a, b, acc in zip(self.classes, self.n_train, self.n_test, self.class_accuracy)}}


def probe_targets(target: str, groups: Sequence[str]) -> list[str]:
    """The target, each group, and target × group for each group: ("label", ["place"]) →
    ["label", "place", "label*place"]."""
    return list(dict.fromkeys([target, *groups, *(f"{target}{COMBINE}{g}" for g in groups)]))


def _take(rows: np.ndarray, codes: np.ndarray, config: ProbeConfig, rng: np.random.Generator) -> np.ndarray:
    """`rows`, subsampled per class as the config asks (sorted)."""
    present, counts = np.unique(codes[rows], return_counts=True)
    quota = int(counts.min()) if config.balance and len(counts) else None
    if config.max_per_class is not None:
        quota = min(quota or config.max_per_class, config.max_per_class)
    if quota is None:
        return rows
    parts = []
    for c in present:
        members = rows[codes[rows] == c]
        parts.append(rng.choice(members, size=min(quota, len(members)), replace=False))
    return np.sort(np.concatenate(parts)) if parts else rows[:0]


def probe_rows(metadata: Metadata, spec: str, config: ProbeConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of a probe for `spec`, drawn as the module docstring says."""
    codes, _ = group_column(metadata, spec)
    known = np.ones(len(metadata), dtype=bool) if LABEL not in spec.split(COMBINE) else metadata.label >= 0
    rng = np.random.default_rng([config.seed, zlib.crc32(spec.encode())])
    train = np.intersect1d(metadata.split_indices(config.train_split), np.flatnonzero(known))
    if config.train_split == config.test_split:
        halves = [rng.permutation(train[codes[train] == c]) for c in np.unique(codes[train])]
        test = np.sort(np.concatenate([h[len(h) // 2:] for h in halves]))
        train = np.sort(np.concatenate([h[:len(h) // 2] for h in halves]))
    else:
        test = np.intersect1d(metadata.split_indices(config.test_split), np.flatnonzero(known))
    return _take(train, codes, config, rng), _take(test, codes, config, rng)


def probe(features: np.ndarray, codes: np.ndarray, classes: Sequence[str], train: np.ndarray, test: np.ndarray,
          C: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Fit the shared linear learner on rows `train` of `features` (labels `codes`) and score rows
    `test`: (train count, test count, held-out accuracy) per class, and overall accuracy."""
    from embedcache.learners.linear import LinearConfig, LinearLearner

    k = len(classes)
    if len(np.unique(codes[train])) < 2:
        raise ConfigError(f"a probe needs at least two classes in its training part; it has {len(train)} example(s) "
                          f"of {len(np.unique(codes[train]))} class(es)")
    if not len(test):
        raise ConfigError("the probe's test part is empty")
    learner = LinearLearner(features, k, LinearConfig(C=C, warm_start=False))
    learner.prepare(train, {"test": test})
    learner.fit(train, codes[train])
    correct = learner.predict_proba(test).argmax(axis=1) == codes[test]
    n_test = np.bincount(codes[test], minlength=k)
    hits = np.bincount(codes[test], weights=correct.astype(np.float64), minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(n_test > 0, hits / np.maximum(n_test, 1), np.nan)
    return np.bincount(codes[train], minlength=k), n_test, per_class, float(correct.mean())


def separability(caches: Sequence[str | Path], target: str = LABEL, groups: Sequence[str] = (),
                 config: ProbeConfig | None = None, progress: Progress | None = None) -> list[ProbeResult]:
    """Probes for `probe_targets(target, groups)` on every cache, in cache then target order."""
    from embedcache.cache import EmbeddingCache
    from embedcache.recipe import recipe_label

    config = config or ProbeConfig()
    targets = probe_targets(target, groups)
    results: list[ProbeResult] = []
    for path in caches:
        with EmbeddingCache(path) as cache:
            cache.require_complete()
            metadata = cache.metadata()
            try:
                plans = [(spec, *group_column(metadata, spec), *probe_rows(metadata, spec, config)) for spec in targets]
            except EmbedcacheError as e:
                raise e.within(str(path)) from None
            needed = np.unique(np.concatenate([np.concatenate([tr, te]) for *_, tr, te in plans]))
            features = cache.embeddings(needed, dtype=np.float32)
            backbone, fingerprint = recipe_label(cache.recipe), cache.fingerprint
        position = np.full(len(metadata), -1, dtype=np.int64)
        position[needed] = np.arange(len(needed))
        for spec, codes, classes, train, test in plans:
            try:
                n_train, n_test, per_class, accuracy = probe(features, codes[needed], classes, position[train],
                                                             position[test], config.C)
            except EmbedcacheError as e:
                raise e.within(f"{path}, probe {spec!r}") from None
            chance = float(n_test.max() / n_test.sum())
            results.append(ProbeResult(str(path), backbone, fingerprint, spec, tuple(classes), n_train, n_test,
                                       per_class, accuracy, chance))
            if progress:
                progress(len(results), len(caches) * len(targets))
    return results


#: The files `write_separability` writes.
FILES = ("separability.csv", "separability.png", "separability.json")


def separability_folder(out_dir: str | Path, overwrite: bool = False) -> OutputFolder:
    """The output folder, checked (see `embedcache.outputs.OutputFolder`)."""
    return OutputFolder(out_dir, "separability", overwrite)


def write_separability(results: Sequence[ProbeResult], out_dir: str | Path | OutputFolder, config: ProbeConfig,
                       overwrite: bool = False) -> list[Path]:
    """separability.csv (per class and overall), separability.png (one panel per probe: bars per
    cache, chance dashed) and separability.json (config and results) in `out_dir`: a new or empty
    folder, or an earlier output, replaced only with `overwrite` once the new one is complete.
    Returns the paths written."""
    from embedcache.analysis.plots import BarPanel, plot_bars

    folder = out_dir if isinstance(out_dir, OutputFolder) else separability_folder(out_dir, overwrite)
    caches_of: dict[str, set[str]] = {}
    for r in results:
        caches_of.setdefault(r.backbone, set()).add(r.cache)
    names = {r.cache: r.backbone if len(caches_of[r.backbone]) == 1 else f"{r.backbone}, {Path(r.cache).name}"
             for r in results}
    panels = []
    for target in dict.fromkeys(r.target for r in results):
        probes = [r for r in results if r.target == target]
        series = [(names[r.cache], np.append(r.class_accuracy, r.accuracy), np.full(len(r.classes) + 1, np.nan))
                  for r in probes]
        panels.append(BarPanel(f"probe: {target}", [*probes[0].classes, "(all)"], series, reference=probes[0].chance))
    summary = {"config": dataclasses.asdict(config), "probes": [r.to_dict() for r in results]}
    with folder.writing() as out:
        write_csv(out / "separability.csv", [row for r in results for row in r.rows()])
        plot_bars(out / "separability.png", panels, "held-out accuracy")
        write_json(out / "separability.json", summary)
    return [folder.path / name for name in FILES]
