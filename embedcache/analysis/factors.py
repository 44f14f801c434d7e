"""How results change with one factor of a study: the finetune stop rule (the paper's Appendix D),
a quantity of the dataset such as the Waterbirds variants' matched share (Figure 9), and the
backbone (Appendix G's Figures 12 and 13).

* Stop rules: when curves differ in the recipe's `stop` (see `curves.run_variants`), each one's
  final metric, its wall time per run (the sum of its rounds' `seconds`: training + acquisition)
  and its optimizer steps per run, each a mean over seeds with a 95 % interval; and each rule
  against the paper's loss-ratio stop (or the first rule present) on the same backbone, strategy
  and other settings: differences paired by seed (seed sets) with a paired t interval and test
  (`stats.difference`; Welch's when the seeds differ).
* A dataset quantity: a numeric parameter recorded with the data (`Source.dataset_parameters`, e.g.
  `matched` from the builder's build.json) that takes two or more values across curves; every
  upsampling ratio is placed against it, one series per (backbone, strategy, other settings).
* Backbones: with two or more, the upsampling ratios side by side per backbone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from embedcache.analysis.acquisitions import Upsampling
from embedcache.analysis.curves import CurveKey
from embedcache.analysis.stats import Difference, Estimate, difference, estimate
from embedcache.records import Run

#: The variant axis that names a finetune recipe's early-stop rule, and the paper's rule.
STOP_AXIS = "stop"
PAPER_STOP = "loss_ratio"


def _without(key: CurveKey, axis: str) -> CurveKey:
    return dataclasses.replace(key, variant=tuple((a, v) for a, v in key.variant if a != axis))


def _value(key: CurveKey, axis: str) -> str | None:
    return next((v for a, v in key.variant if a == axis), None)


# ------------------------------------------------------------------------------------------------ stop rules

def final_value(run: Run, split: str, metric: str) -> float | None:
    """The metric at the last round of `run` that evaluated it on `split`."""
    values = run.curve(split, metric)[1]
    return float(values[-1]) if len(values) else None


def _costs(run: Run) -> tuple[float, float]:
    """(wall seconds, optimizer steps) of a run: its rounds' training + acquisition, summed."""
    return sum(r.seconds for r in run.rounds), float(sum(r.training.steps or 0 for r in run.rounds))


@dataclasses.dataclass
class StopRule:
    """One curve's cost and outcome under its stop rule: the final `metric`, wall seconds and
    optimizer steps per run, each over seeds."""

    key: CurveKey
    stop: str
    final: Estimate
    seconds: Estimate
    steps: Estimate

    def to_dict(self, metric: str) -> dict:
        return {**_without(self.key, STOP_AXIS).columns(), "stop": self.stop, "seeds": self.final.n,
                metric: self.final.to_dict(), "seconds": self.seconds.to_dict(), "steps": self.steps.to_dict()}

    def row(self, metric: str) -> dict:
        row = {**_without(self.key, STOP_AXIS).columns(), "stop": self.stop, "n_seeds": self.final.n}
        for name, e in ((metric, self.final), ("seconds", self.seconds), ("steps", self.steps)):
            row.update({name: e.mean, f"{name}_ci_low": e.low, f"{name}_ci_high": e.high})
        return row


@dataclasses.dataclass
class StopRuleDifference:
    """`stop` − `against` on the same backbone, strategy and other settings: the final metric, wall
    seconds and steps per run, paired by seed when both rules ran the same seeds."""

    key: CurveKey
    stop: str
    against: str
    final: Difference
    seconds: Difference
    steps: Difference

    def to_dict(self, metric: str) -> dict:
        return {**self.key.columns(), "stop": self.stop, "against": self.against,
                metric: self.final.to_dict(), "seconds": self.seconds.to_dict(), "steps": self.steps.to_dict()}

    def rows(self, metric: str) -> list[dict]:
        return [{**self.key.columns(), "stop": self.stop, "against": self.against, "quantity": name, **d.to_dict()}
                for name, d in ((metric, self.final), ("seconds", self.seconds), ("steps", self.steps))]


@dataclasses.dataclass
class StopRules:
    """Every curve's stop rule, and each rule against the reference one."""

    metric: str
    rules: list[StopRule]
    differences: list[StopRuleDifference]

    def to_dict(self) -> dict:
        return {"metric": self.metric, "rules": [r.to_dict(self.metric) for r in self.rules],
                "differences": [d.to_dict(self.metric) for d in self.differences]}


def stop_rules(runs: dict[CurveKey, list[Run]], split: str, metric: str, interval: str = "t") -> StopRules | None:
    """The stop-rule comparison of the curves (module docstring), or None when no curves differ in
    their stop rule."""
    keyed = {key: members for key, members in runs.items() if _value(key, STOP_AXIS) is not None}
    if not keyed:
        return None
    per_seed: dict[CurveKey, list[tuple[int, float, float, float]]] = {}
    rules = []
    for key, members in keyed.items():
        values = [(r.seed, value, *_costs(r)) for r in members if (value := final_value(r, split, metric)) is not None]
        if not values:
            continue
        per_seed[key] = values
        finals, seconds, steps = zip(*[v[1:] for v in values])
        rules.append(StopRule(key, _value(key, STOP_AXIS), estimate(finals, interval), estimate(seconds, interval),
                              estimate(steps, interval)))
    by_setting: dict[CurveKey, dict[str, CurveKey]] = {}
    for key in per_seed:
        by_setting.setdefault(_without(key, STOP_AXIS), {})[_value(key, STOP_AXIS)] = key
    differences = []
    for setting, keys in by_setting.items():
        against = PAPER_STOP if PAPER_STOP in keys else sorted(keys)[0]
        base = per_seed[keys[against]]
        for stop, key in sorted(keys.items()):
            if stop == against:
                continue
            mine = per_seed[key]
            columns = [difference([(v[0], v[i]) for v in mine], [(v[0], v[i]) for v in base], interval)
                       for i in (1, 2, 3)]
            differences.append(StopRuleDifference(setting, stop, against, *columns))
    return StopRules(metric, rules, differences)


# ------------------------------------------------------------------------------------ a dataset quantity

def key_parameters(runs: dict[CurveKey, list[Run]]) -> dict[CurveKey, dict[str, Any]]:
    """Per curve, the dataset parameters all its runs share (`Source.dataset_parameters`)."""
    shared = {}
    for key, members in runs.items():
        common = dict(members[0].header.source.dataset_parameters)
        for run in members[1:]:
            theirs = run.header.source.dataset_parameters
            common = {k: v for k, v in common.items() if k in theirs and theirs[k] == v}
        shared[key] = common
    return shared


def varied_quantities(parameters: dict[CurveKey, dict[str, Any]]) -> list[str]:
    """Numeric dataset parameters with two or more values across the curves, in first-seen order."""
    values: dict[str, set] = {}
    for params in parameters.values():
        for name, v in params.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                values.setdefault(name, set()).add(v)
    return [name for name, seen in values.items() if len(seen) > 1]


@dataclasses.dataclass
class Against:
    """Upsampling ratios placed against a dataset quantity: `points[spec]` lists (series key, x,
    upsampling) with the series key the curve's key without the quantity's axis."""

    quantity: str
    points: dict[str, list[tuple[CurveKey, float, Upsampling]]]

    def _flat(self, as_row: bool) -> list[dict]:
        """Every point: its series' columns, the quantity, and the upsampling (a CSV row's, or JSON's)."""
        result = []
        for entries in self.points.values():
            for series, x, u in entries:
                fields = u.row() if as_row else u.to_dict()
                result.append({**series.columns(), self.quantity: x,
                               **{k: v for k, v in fields.items() if k not in ("backbone", "strategy", "variant")}})
        return result

    def rows(self) -> list[dict]:
        return self._flat(as_row=True)

    def series_of(self, spec: str, value: str) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """(label, xs, mean ratios, CI half-widths) of each series that acquired `spec` = `value`, for a figure."""
        found: dict[CurveKey, list[tuple[float, Estimate]]] = {}
        for series, x, u in self.points[spec]:
            if u.value == value:
                found.setdefault(series, []).append((x, u.ratio))
        result = []
        for series, points in found.items():
            points.sort(key=lambda p: p[0])
            result.append((series.label, np.array([x for x, _ in points]), *_means([e for _, e in points])))
        return result

    def xs(self) -> list[float]:
        return sorted({x for entries in self.points.values() for _, x, _ in entries})

    def to_dict(self) -> dict:
        return {"quantity": self.quantity, "points": self._flat(as_row=False)}


def against_quantity(upsampling: dict[str, list[Upsampling]], parameters: dict[CurveKey, dict[str, Any]],
                     quantity: str) -> Against:
    """Every upsampling ratio of a curve that has `quantity`, against its value (sorted by it)."""
    points: dict[str, list[tuple[CurveKey, float, Upsampling]]] = {}
    for spec, entries in upsampling.items():
        found = [(_without(u.key, quantity), float(parameters[u.key][quantity]), u) for u in entries
                 if quantity in parameters.get(u.key, {})]
        if found:
            points[spec] = sorted(found, key=lambda p: (p[0], p[2].value, p[1]))
    return Against(quantity, points)


def backbones(keys: Sequence[CurveKey]) -> list[str]:
    """The backbone labels of the curves, sorted; a per-backbone view is drawn when there are two or more."""
    return sorted({k.backbone for k in keys})


def per_backbone(entries: Sequence[Upsampling], value: str,
                 names: Sequence[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(strategy and settings, mean ratio per backbone in `names`, CI half-widths) of a group value, for bars."""
    ratios: dict[str, dict[str, Estimate]] = {}
    for u in entries:
        if u.value == value:
            label = " · ".join([u.key.strategy, *([u.key.variant_text] if u.key.variant else [])])
            ratios.setdefault(label, {})[u.key.backbone] = u.ratio
    return [(label, *_means([r.get(name) for name in names])) for label, r in ratios.items()]


def _means(estimates: Sequence[Estimate | None]) -> tuple[np.ndarray, np.ndarray]:
    """(means, CI half-widths) of estimates, NaN where an estimate or its interval is missing."""
    means = np.array([np.nan if e is None else e.mean for e in estimates], dtype=np.float64)
    half = np.array([np.nan if e is None or e.half_width is None else e.half_width for e in estimates],
                    dtype=np.float64)
    return means, half
