"""Evaluation metrics, shared by every mode.

`evaluate` returns one JSON-ready dict per split (what the run records store):

    {"n": 1199, "accuracy": 0.81,
     "groups": {"label*place": {"waterbird*land": {"n": 300, "accuracy": 0.62}, ...}, "place": {...}},
     "worst_group": {"group": "label*place", "value": "waterbird*land", "accuracy": 0.62},
     "class_balanced_accuracy": ..., "macro_f1": ..., "user_accuracy_p10": ...}

Groups are named by metadata columns; `a*b` is the combination of columns a and b, and "label"
is the label column, so "label*place" is the paper's (bird × background) grouping.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from embedcache.errors import ConfigError
from embedcache.metadata import Metadata

#: Joins column names in a group spec and value names in a combined group value.
COMBINE = "*"
#: Metrics an EvalSpec may ask for besides accuracy and groups.
EXTRA_METRICS = ("class_balanced_accuracy", "macro_f1")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """What to compute on each evaluated split.

    groups: group specs ("place", "label*place") reported per value; worst_group: the spec whose
    worst value is reported; metrics: any of EXTRA_METRICS; percentiles: (group, q) pairs giving
    the q-th percentile of per-value accuracy (WILDS Amazon: ("user", 10)).
    """

    groups: tuple[str, ...] = ()
    worst_group: str | None = None
    metrics: tuple[str, ...] = ()
    percentiles: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics) - set(EXTRA_METRICS))
        if unknown:
            raise ConfigError(f"unknown metric(s) {unknown}; these are computed on request: {list(EXTRA_METRICS)} "
                              "(accuracy, groups and percentiles always are, when asked for)", param="metrics")
        for group, q in self.percentiles:
            if not 0 <= q <= 100:
                raise ConfigError(f"{group}:{q:g}: the percentile must lie in 0..100", param="percentiles")

    def check(self, metadata: Metadata) -> None:
        """Raise ConfigError if a group spec names a column the data does not have."""
        specs = list(self.groups) + [g for g, _ in self.percentiles] + ([self.worst_group] if self.worst_group else [])
        for spec in specs:
            group_column(metadata, spec)


def group_column(metadata: Metadata, spec: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Codes and value names of a group spec: one column, or columns joined with "*"."""
    parts = spec.split(COMBINE)
    columns = [metadata.column(p) for p in parts]
    if len(columns) == 1:
        return columns[0]
    codes = np.zeros(len(metadata), dtype=np.int64)
    names: list[str] = [""]
    for col_codes, col_names in columns:
        codes = codes * len(col_names) + col_codes
        names = [f"{a}{COMBINE}{b}" if a else b for a in names for b in col_names]
    return codes, tuple(names)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def per_group_accuracy(correct: np.ndarray, codes: np.ndarray, names: tuple[str, ...]) -> dict[str, dict]:
    """{value: {"n", "accuracy"}} for every value present."""
    counts = np.bincount(codes, minlength=len(names))
    hits = np.bincount(codes, weights=correct.astype(np.float64), minlength=len(names))
    return {names[c]: {"n": int(counts[c]), "accuracy": float(hits[c] / counts[c])}
            for c in np.flatnonzero(counts)}


def class_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in y_true of the per-class recall."""
    classes = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes])) if len(classes) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 over the classes present in y_true (as WILDS computes it for iWildCam)."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))


def percentile_accuracy(correct: np.ndarray, codes: np.ndarray, q: float) -> float:
    """q-th percentile (linear interpolation) of per-group accuracy (WILDS Amazon: per-user, q = 10)."""
    counts = np.bincount(codes)
    hits = np.bincount(codes, weights=correct.astype(np.float64))
    present = counts > 0
    return float(np.percentile(hits[present] / counts[present], q))


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, metadata: Metadata, spec: EvalSpec) -> dict:
    """Metrics of predictions on the rows described by `metadata` (same order as y_true / y_pred)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    correct = y_true == y_pred
    result: dict = {"n": int(len(y_true)), "accuracy": accuracy(y_true, y_pred)}
    if spec.groups:
        result["groups"] = {g: per_group_accuracy(correct, *group_column(metadata, g)) for g in spec.groups}
    if spec.worst_group:
        groups = result.get("groups", {}).get(spec.worst_group) or per_group_accuracy(
            correct, *group_column(metadata, spec.worst_group))
        value = min(groups, key=lambda v: (groups[v]["accuracy"], v))
        result["worst_group"] = {"group": spec.worst_group, "value": value, "accuracy": groups[value]["accuracy"]}
    if "class_balanced_accuracy" in spec.metrics:
        result["class_balanced_accuracy"] = class_balanced_accuracy(y_true, y_pred)
    if "macro_f1" in spec.metrics:
        result["macro_f1"] = macro_f1(y_true, y_pred)
    for group, q in spec.percentiles:
        codes, _ = group_column(metadata, group)
        result[f"{group}_accuracy_p{q:g}"] = percentile_accuracy(correct, codes, q)
    return result
