"""Learning curves over seeds and the comparison of two strategies (labels-to-reach, final gain).

Runs are grouped into curves by (backbone label, strategy), and also by whatever tells runs of
one (backbone, strategy) apart (`run_variants`): the dataset's parameters (each Waterbirds
variant's matched share), the finetune recipe (e.g. its stop rule) and, for runs of a sweep
(`embedcache.sweep_index`), the sweep's axes (each per_round schedule); each curve is the mean
over its seeds, at every number of labels some of them evaluated, with a 95 % band (see `stats`).

One curve must be one set of features. The rule: all runs of a (backbone, strategy) key share
the features identity: the `fingerprint` and the `data` (which examples) in the header. Runs of
different backbones in one report are separate curves and normal; the same key with two identities (two caches whose recipes print the same
label, or one backbone over two datasets) is refused unless `allow_mixed`, which pools them.
The same (key, identity, seed) twice is always refused: the run would be counted twice.

Metrics are named: "accuracy", "worst_group", the dataset's own ("macro_f1",
"class_balanced_accuracy", "user_accuracy_p10", ...), and "SPEC=VALUE" for one group value,
e.g. "label*place=waterbird*land".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from embedcache.analysis.stats import Difference, Estimate, difference, estimate, labels_to_reach
from embedcache.errors import ConfigError
from embedcache.records import RecordError, Run
from embedcache.sweep_index import cell_of, value_text

#: Metrics listed first, in this order, when present; the dataset's own follow, then group values.
HEADLINE_METRICS = ("accuracy", "worst_group")


@dataclasses.dataclass(frozen=True, order=True)
class CurveKey:
    """What one line in a figure stands for; `variant`: (axis, value) pairs of a sweep's cell."""

    backbone: str
    strategy: str
    variant: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        return " · ".join([self.strategy, self.backbone, *(f"{axis}={value}" for axis, value in self.variant)])

    @property
    def variant_text(self) -> str:
        return " ".join(f"{axis}={value}" for axis, value in self.variant)

    def columns(self) -> dict[str, str]:
        """The key as table columns: backbone, strategy, and variant when the runs come from a sweep's cells."""
        return {"backbone": self.backbone, "strategy": self.strategy,
                **({"variant": self.variant_text} if self.variant else {})}


def features_identity(run: Run) -> tuple[str, str]:
    """(fingerprint, data): equal for runs on the same features of the same examples."""
    return run.fingerprint, run.header.data


def recipe_fields(run: Run) -> dict[str, Any]:
    """The finetune recipe a run trained with (a hybrid's finetune side's), `stop` filled in as
    "loss_ratio" where the header leaves it out (`FinetuneRecipe.to_dict`); {} for other learners."""
    learner = run.header.learner
    sides = [learner, *(learner.get(k) for k in ("evaluate_with", "score_with"))]
    recipe = next((side["recipe"] for side in sides if isinstance(side, dict) and isinstance(side.get("recipe"), dict)),
                  None)
    if recipe is None:
        return {}
    return {"stop": "loss_ratio", **{k: v for k, v in recipe.items() if k != "name"}}


def _candidate_axes(run: Run, cell: dict[str, Any]) -> dict[str, str]:
    """What may tell a run apart from others of its (backbone, strategy), in the order variants name it:
    the dataset's parameters (e.g. matched), the finetune recipe's fields (e.g. stop), the sweep cell's values."""
    values = {**run.header.source.dataset_parameters, **recipe_fields(run)}
    values.update({axis: v for axis, v in cell.items() if axis not in values})
    return {axis: value_text(v) for axis, v in values.items()}


def run_variants(runs: Sequence[Run]) -> dict[Path, tuple[tuple[str, str], ...]]:
    """Each run's values of what varies among runs of one (backbone, strategy): the dataset's
    parameters (a Waterbirds variant's `matched` share, from its build record), the finetune
    recipe (e.g. `stop=val_plateau` against the default loss-ratio stop) and the axes of the sweep
    whose cell holds the run. An axis varies when two runs of one (backbone, strategy) that both
    have it differ in it; one that only repeats a distinction the earlier axes make (the sweep's
    `cache` axis beside the caches' `matched`) is left out. Empty when nothing varies."""
    indexes: dict = {}
    candidates = {}
    for run in runs:
        cell = cell_of(run.path, indexes)
        candidates[run.path] = _candidate_axes(run, {} if cell is None else cell.values)
    members: dict[tuple[str, str], list[dict[str, str]]] = {}
    for run in runs:
        members.setdefault((run.backbone, run.strategy), []).append(candidates[run.path])
    kept: list[str] = []
    for axis in dict.fromkeys(axis for values in candidates.values() for axis in values):
        for group in members.values():
            seen: dict[tuple, str] = {}
            if any(seen.setdefault(tuple(v.get(k) for k in kept), v[axis]) != v[axis] for v in group if axis in v):
                kept.append(axis)
                break
    return {path: tuple((axis, v[axis]) for axis in kept if axis in v) for path, v in candidates.items()}


def group_runs(runs: Sequence[Run], allow_mixed: bool = False,
               variants: dict[Path, tuple[tuple[str, str], ...]] | None = None) -> dict[CurveKey, list[Run]]:
    """Runs by curve (with each run's `variants`, see `run_variants`), keys sorted, each list
    sorted by (seed, identity, path); see the module docstring."""
    groups: dict[CurveKey, list[Run]] = {}
    for run in runs:
        variant = (variants or {}).get(run.path, ())
        groups.setdefault(CurveKey(run.backbone, run.strategy, variant), []).append(run)
    for key, members in groups.items():
        members.sort(key=lambda r: (r.seed, features_identity(r), str(r.path)))
        example = {features_identity(r): r.path for r in members}
        if len(example) > 1 and not allow_mixed:
            listed = "; ".join(f"{path} (fingerprint {f[:12]}, dataset {d[:40]})" for (f, d), path in example.items())
            raise RecordError(f"runs of {key.label!r} come from {len(example)} different "
                              f"features: {listed}. Report them separately, or pass `allow_mixed` to pool them "
                              "into one curve")
        seen: dict[tuple, Run] = {}
        for run in members:
            other = seen.setdefault((run.seed, features_identity(run)), run)
            if other is not run:
                raise RecordError(f"{other.path} and {run.path} are the same run ({key.label!r}, seed {run.seed}); "
                                  "pass each run once")
    return dict(sorted(groups.items()))


def curve_metrics(runs: Sequence[Run], split: str) -> list[str]:
    """Every metric some run evaluated on `split`: headline, the dataset's own (sorted), group values."""
    scalars, groups = set(), {}
    for run in runs:
        for r in run.rounds:
            metrics = r.metrics.get(split)
            if metrics is not None:
                scalars.update(metrics.scalar_names())
                groups.update(dict.fromkeys(metrics.group_names()))
    headline = [m for m in HEADLINE_METRICS if m in scalars]
    own = sorted(scalars - set(HEADLINE_METRICS))
    return headline + own + list(groups)


def evaluated_splits(runs: Sequence[Run]) -> list[str]:
    """Splits evaluated in some round of some run, in first-seen order."""
    splits: dict[str, None] = {}
    for run in runs:
        for r in run.rounds:
            splits.update(dict.fromkeys(r.metrics))
    return list(splits)


def check_split(runs: Sequence[Run], split: str) -> None:
    """ConfigError unless every run evaluated `split` in some round."""
    for run in runs:
        if not any(split in r.metrics for r in run.rounds):
            found = evaluated_splits([run]) or "nothing"
            raise ConfigError(f"{split!r}: {run.path} has no metrics for it (it evaluated {found})", param="split")


@dataclasses.dataclass
class Curve:
    """A metric's mean over seeds against the number of labels: arrays of equal length, one entry
    per number of labels some seed reached; `n` seeds there, `half_width` NaN where n = 1."""

    key: CurveKey
    metric: str
    n_labeled: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    half_width: np.ndarray
    n: np.ndarray

    @classmethod
    def from_points(cls, key: CurveKey, metric: str, points: dict[int, list[float]], interval: str = "t") -> "Curve":
        xs = sorted(points)
        stats = [estimate(points[x], interval) for x in xs]
        nan = float("nan")
        return cls(key, metric, np.asarray(xs, dtype=np.int64), np.array([s.mean for s in stats]),
                   np.array([nan if s.sd is None else s.sd for s in stats]),
                   np.array([nan if s.half_width is None else s.half_width for s in stats]),
                   np.array([s.n for s in stats], dtype=np.int64))

    def point(self, i: int) -> Estimate:
        """The estimate at the i-th number of labels (-1: the last)."""
        sd, half = float(self.sd[i]), float(self.half_width[i])
        return Estimate(float(self.mean[i]), int(self.n[i]), None if np.isnan(sd) else sd,
                        None if np.isnan(half) else half)

    def rows(self) -> list[dict]:
        """One dict per point, for CSV tables."""
        return [{**self.key.columns(), "metric": self.metric,
                 "n_labeled": int(x), "n_seeds": int(n), "mean": m, "sd": sd, "ci_low": m - h, "ci_high": m + h}
                for x, n, m, sd, h in zip(self.n_labeled, self.n, self.mean, self.sd, self.half_width)]


def learning_curve(key: CurveKey, runs: Sequence[Run], split: str, metric: str = "accuracy",
                   interval: str = "t") -> Curve:
    """The mean (± 95 % CI of kind `interval`, see `stats`) over `runs` of `metric` on `split`, at every
    number of labels evaluated."""
    points: dict[int, list[float]] = {}
    for run in runs:
        for x, y in zip(*run.curve(split, metric)):
            points.setdefault(int(x), []).append(float(y))
    if not points:
        raise ConfigError(f"no run of {key.label!r} recorded {metric!r} on split {split!r}")
    return Curve.from_points(key, metric, points, interval)


def values_at(runs: Sequence[Run], split: str, metric: str, n_labeled: int) -> list[tuple[int, float]]:
    """(seed, value) of every run that evaluated `metric` with `n_labeled` labels."""
    found = []
    for run in runs:
        xs, ys = run.curve(split, metric)
        hit = np.flatnonzero(xs == n_labeled)
        if len(hit):
            found.append((run.seed, float(ys[hit[-1]])))
    return found


@dataclasses.dataclass
class Comparison:
    """Strategy A (`key`) against a baseline B on one metric.

    target: B's final mean (at `baseline_labels`, its largest number of labels); labels_to_reach:
    the labels from which A's mean curve reaches it and stays there (interpolated, None if it ends
    below; `stats.labels_to_reach`); ratio:
    baseline_labels / labels_to_reach ("5x fewer labels"). Labels count the whole labelled set,
    seed set included, as the curves' x-axis. gain: A − B at `compared_at`, the largest number
    of labels both curves evaluated (None if they share none)."""

    key: CurveKey
    baseline: CurveKey
    metric: str
    target: float
    baseline_labels: int
    labels_to_reach: float | None
    ratio: float | None
    compared_at: int | None
    gain: Difference | None

    def to_dict(self) -> dict:
        return {**self.key.columns(), "baseline": self.baseline.strategy,
                "baseline_backbone": self.baseline.backbone, "metric": self.metric, "target": self.target,
                "baseline_labels": self.baseline_labels, "labels_to_reach": self.labels_to_reach, "ratio": self.ratio,
                "compared_at": self.compared_at, "gain": None if self.gain is None else self.gain.to_dict()}


def compare(key: CurveKey, runs: Sequence[Run], baseline: CurveKey, baseline_runs: Sequence[Run], split: str,
            metric: str = "accuracy", interval: str = "t") -> Comparison:
    """Labels-to-reach, ratio and final gain of `runs` against `baseline_runs` (see `Comparison`)."""
    a = learning_curve(key, runs, split, metric, interval)
    b = learning_curve(baseline, baseline_runs, split, metric, interval)
    target, baseline_labels = float(b.mean[-1]), int(b.n_labeled[-1])
    reach = labels_to_reach(a.n_labeled, a.mean, target)
    ratio = None if reach is None or reach <= 0 else baseline_labels / reach
    shared = np.intersect1d(a.n_labeled, b.n_labeled)
    at = int(shared[-1]) if len(shared) else None
    gain = None if at is None else difference(values_at(runs, split, metric, at),
                                              values_at(baseline_runs, split, metric, at), interval)
    return Comparison(key, baseline, metric, target, baseline_labels, reach, ratio, at, gain)
