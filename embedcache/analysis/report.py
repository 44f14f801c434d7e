"""`embedcache report`: the paper's result figures and tables, from run records alone.

`write_report(runs, out_dir)` writes:

* `summary.md`: what a person reads: final metrics ± 95 % CI per curve (backbone × strategy, and
  what else tells runs apart: the dataset's parameters, the finetune recipe, the values a sweep
  varied, `curves.run_variants`; Student t intervals by default, Gaussian ones as in the paper
  with `interval="gaussian"`), labels-to-reach and final gain against the baseline strategy, the
  most upsampled groups, where each stopping signal would have stopped the runs and what that cost
  (`stopping`), and where the runs call for them (`factors`): the stop rules compared (Appendix D),
  upsampling against a dataset quantity such as the matched share (Figure 9), and upsampling per
  backbone (Appendix G); links to every figure and table;
* `summary.json`: the same numbers for scripts, deterministic (keys sorted, floats to 6
  significant digits, record paths relative to the output folder, no times), so a report of
  the same runs is the same file;
* tables `curves.csv`, `comparisons.csv`, `upsampling.csv`, and `upsampling-rounds.csv` (the
  cumulative ratio, for the values the figures show); `stopping.csv` (per curve and signal) with
  `stopping-runs.csv` (per run and signal) when the runs record stopping measures; `stop-rules.csv`
  and `stop-rule-differences.csv` when curves differ in their stop rule; `upsampling-vs-<quantity>.csv`
  per varied dataset quantity;
* figures `curves-overall.png` (accuracy, worst group, the dataset's own metrics),
  `curves-<group>.png` (one panel per group value), `upsampling-<group>.png` (bars with CIs)
  and `upsampling-rounds-<group>.png` (the cumulative ratio against labels);
  `curves-stopping.png` (one panel per curve: the report's metric, each signal's median stop
  marked on it); `upsampling-vs-<quantity>-<group>.png` (the ratio against the quantity, a panel per
  value) and, with two or more backbones, `upsampling-by-backbone-<group>.png`. A group with more
  values than `max_panels` shows the first ones evaluated (curves) or the ones acquired most
  (upsampling).

Incomplete runs take part with the rounds they have (each point's seed count is in the
tables). The output folder follows `embedcache.outputs.OutputFolder`: new, empty, or an earlier
report, which is replaced (with `overwrite` only) once the new one is complete.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from embedcache.analysis.acquisitions import (Upsampling, acquisition_specs, check_spec, cumulative_upsampling,
                                              upsampling)
from embedcache.analysis.curves import (HEADLINE_METRICS, Comparison, Curve, CurveKey, check_split, compare,
                                        curve_metrics, evaluated_splits, group_runs, learning_curve, run_variants)
from embedcache.analysis.factors import (Against, StopRules, against_quantity, backbones, key_parameters,
                                         per_backbone, stop_rules, varied_quantities)
from embedcache.analysis.stats import INTERVAL_TEXT, check_interval
from embedcache.analysis.stopping import RunStop, StopSummary, stopping_points
from embedcache.errors import ConfigError
from embedcache.outputs import OutputFolder, write_csv, write_json
from embedcache.records import Run

SUMMARY = "summary.json"
#: Strategy compared against when present and no other baseline is asked for.
DEFAULT_BASELINE = "random"
#: progress(done, total), called as figures are drawn.
Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """split: evaluated split to report (default: the first the runs evaluated); baseline: the
    strategy others are compared with (default "random" when present); metric: the one for
    labels-to-reach and the gain; groups: group specs for the acquisition analysis (default:
    every recorded column and label × column); allow_mixed: pool runs of one curve made on
    different features; max_panels: panels / bars per figure; top: most upsampled values listed
    per curve; interval: "t" (Student t, the default) or "gaussian" (the paper's figures) 95 %
    intervals, see `stats`."""

    split: str | None = None
    baseline: str | None = None
    metric: str = "accuracy"
    groups: tuple[str, ...] = ()
    allow_mixed: bool = False
    max_panels: int = 16
    top: int = 5
    interval: str = "t"


@dataclasses.dataclass
class Analysis:
    """A report's numbers, computed and not yet written."""

    config: ReportConfig
    split: str
    baseline: str | None
    runs: dict[CurveKey, list[Run]]
    curves: dict[str, list[Curve]]
    comparisons: list[Comparison]
    upsampling: dict[str, list[Upsampling]]
    shown: dict[str, list[str]]
    cumulative: dict[str, list[Curve]]
    notes: list[str]
    stopping: list[StopSummary] = dataclasses.field(default_factory=list)
    stop_runs: list[RunStop] = dataclasses.field(default_factory=list)
    stop_rules: StopRules | None = None
    against: list[Against] = dataclasses.field(default_factory=list)

    @property
    def scalar_metrics(self) -> list[str]:
        return [m for m in self.curves if "=" not in m]

    def group_metrics(self) -> dict[str, list[str]]:
        """Group spec → its value metrics ("SPEC=VALUE"), in evaluation order."""
        specs: dict[str, list[str]] = {}
        for m in self.curves:
            if "=" in m:
                specs.setdefault(m.partition("=")[0], []).append(m)
        return specs


def _baseline(strategies: set[str], asked: str | None) -> str | None:
    if asked is not None and asked not in strategies:
        raise ConfigError(f"{asked!r}: no runs of that strategy; the runs have {sorted(strategies)}", param="baseline")
    return asked if asked is not None else (DEFAULT_BASELINE if DEFAULT_BASELINE in strategies else None)


def analyse(runs: Sequence[Run], config: ReportConfig | None = None) -> Analysis:
    """Every number of the report (see the module docstring); errors before anything is written."""
    config = config or ReportConfig()
    if config.max_panels < 1:
        raise ConfigError("must be at least 1", param="max_panels")
    if config.top < 0:
        raise ConfigError("must be 0 or more", param="top")
    interval = check_interval(config.interval)
    groups = group_runs(runs, config.allow_mixed, run_variants(runs))
    everything = [r for members in groups.values() for r in members]
    splits = evaluated_splits(everything)
    if not splits:
        raise ConfigError("the runs hold no evaluated round yet")
    split = config.split or splits[0]
    check_split(everything, split)
    metrics = curve_metrics(everything, split)
    if config.metric not in metrics:
        raise ConfigError(f"{config.metric!r} is not recorded on split {split!r}; there are: {', '.join(metrics)}",
                          param="metric")
    baseline = _baseline({k.strategy for k in groups}, config.baseline)
    notes = []
    recorded = {key: set(curve_metrics(members, split)) for key, members in groups.items()}
    curves = {m: [learning_curve(key, members, split, m, interval) for key, members in groups.items()
                  if m in recorded[key]] for m in metrics}
    comparisons = []
    for key, members in groups.items():
        if baseline is None or key.strategy == baseline:
            continue
        base = dataclasses.replace(key, strategy=baseline)
        if base in groups:
            comparisons.append(compare(key, members, base, groups[base], split, config.metric, interval))
        else:
            where = " ".join([repr(key.backbone), *([key.variant_text] if key.variant else [])])
            notes.append(f"no {baseline!r} runs on {where}: {key.strategy!r} there is not compared")
    if baseline is None:
        notes.append(f"no baseline: name one (report --baseline), or add {DEFAULT_BASELINE!r} runs, to get "
                     "labels-to-reach")
    for spec in config.groups:
        check_spec(everything, spec)
    ups: dict[str, list[Upsampling]] = {}
    for key, members in groups.items():
        for spec in config.groups or acquisition_specs(members):
            ups.setdefault(spec, []).extend(upsampling(key, members, spec, interval))
    ups = {spec: entries for spec, entries in ups.items() if entries}
    shown = {spec: most_acquired(entries, config.max_panels) for spec, entries in ups.items()}
    for spec, entries in ups.items():
        if len(shown[spec]) < len({u.value for u in entries}):
            notes.append(f"figures of {spec} show the {len(shown[spec])} values acquired most; the tables have all")
    cumulative = {spec: [c for key, members in groups.items() if any(u.key == key for u in ups[spec])
                         for c in cumulative_upsampling(key, members, spec, shown[spec], interval)] for spec in ups}
    stopping, stop_runs, stop_notes = stopping_points(groups, split, config.metric, interval)
    notes += stop_notes
    incomplete = [r for r in everything if not r.complete]
    if incomplete:
        notes.append(f"{len(incomplete)} run(s) are incomplete and count with the rounds they have, e.g. "
                     f"{incomplete[0].path.name} ({len(incomplete[0].rounds)}/{incomplete[0].header.n_rounds} "
                     "rounds)")
    parameters = key_parameters(groups)
    against = [against_quantity(ups, parameters, q) for q in varied_quantities(parameters)]
    return Analysis(config, split, baseline, groups, curves, comparisons, ups, shown, cumulative, notes,
                    stopping=stopping, stop_runs=stop_runs,
                    stop_rules=stop_rules(groups, split, config.metric, interval),
                    against=[a for a in against if a.points])


def top_upsampled(analysis: Analysis) -> list[Upsampling]:
    """Per curve other than the baseline's, the `top` values with the highest mean ratio among
    those random sampling would be expected to acquire at least once (pool share × acquisitions
    ≥ 1): rarer values have ratios that one acquisition inflates."""
    chosen = []
    for key, members in analysis.runs.items():
        if key.strategy == analysis.baseline:
            continue
        acquired = sum(len(r.acquired()) for r in members) / len(members)
        candidates = [u for entries in analysis.upsampling.values() for u in entries
                      if u.key == key and u.pool_share.mean * acquired >= 1]
        candidates.sort(key=lambda u: (-u.ratio.mean, u.spec, u.value))
        chosen += candidates[:analysis.config.top]
    return chosen


def most_acquired(entries: Sequence[Upsampling], limit: int) -> list[str]:
    """The `limit` values of a spec with the largest acquired share under any strategy (what random
    sampling picks and what AL asks for), most prevalent in the pool first."""
    acquired: dict[str, float] = {}
    pool: dict[str, float] = {}
    for u in entries:
        acquired[u.value] = max(acquired.get(u.value, 0.0), u.acquired_share.mean)
        pool[u.value] = max(pool.get(u.value, 0.0), u.pool_share.mean)
    chosen = sorted(acquired, key=lambda v: (-acquired[v], v))[:limit]
    return sorted(chosen, key=lambda v: (-pool[v], v))


def slug(text: str) -> str:
    """A file-name-safe form of a group spec or value: "label*place" → "label-x-place"."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text.replace("*", "-x-")).strip("-") or "_"


def _figures(analysis: Analysis, out: Path) -> tuple[list[tuple[str, str, Callable[[], Path]]], list[str]]:
    """(file name, caption, draw) of every figure, drawn later so progress can be shown; and notes
    on what the figures leave out."""
    from embedcache.analysis import plots

    cap = analysis.config.max_panels
    figures, notes = [], []

    def add(name: str, caption: str, plot: Callable, *args, **kwargs) -> None:
        figures.append((name, caption, functools.partial(plot, out / name, *args, **kwargs)))

    overall = [(m.replace("_", " "), analysis.curves[m]) for m in analysis.scalar_metrics]
    add("curves-overall.png", f"learning curves on {analysis.split}", plots.plot_curves, overall, None)
    for spec, metrics in analysis.group_metrics().items():
        if len(metrics) > cap:
            notes.append(f"curves-{slug(spec)}.png shows {cap} of {len(metrics)} values of {spec}; curves.csv has all")
        panels = [(m.partition("=")[2], analysis.curves[m]) for m in metrics[:cap]]
        add(f"curves-{slug(spec)}.png", f"accuracy per {spec} on {analysis.split}", plots.plot_curves, panels,
            "accuracy")
    for spec, entries in analysis.upsampling.items():
        values = analysis.shown[spec]
        series = []
        for key in dict.fromkeys(u.key for u in entries):
            ratio = {u.value: u.ratio for u in entries if u.key == key}
            means = np.array([ratio[v].mean if v in ratio else np.nan for v in values])
            half = np.array([ratio[v].half_width if v in ratio and ratio[v].half_width is not None else np.nan
                             for v in values])
            series.append((key.label, means, half))
        add(f"upsampling-{slug(spec)}.png", f"upsampling ratio per {spec}", plots.plot_bars,
            [plots.BarPanel(f"upsampling ratio per {spec}", values, series, reference=1.0)],
            "acquired share / pool share")
        curves = analysis.cumulative.get(spec, [])
        panels = [(v, [c for c in curves if c.metric == f"{spec}={v}"]) for v in values]
        add(f"upsampling-rounds-{slug(spec)}.png", f"cumulative upsampling ratio per {spec}", plots.plot_curves,
            panels, "upsampling ratio so far", reference=1.0)
    if analysis.stopping:
        metric = analysis.config.metric
        marks: dict = {}
        for s in analysis.stopping:
            marks.setdefault(s.key, []).append((f"{s.signal} (median)", s.median_labels))
        curves = [c for c in analysis.curves[metric] if c.key in marks]
        if len(curves) > cap:
            notes.append(f"curves-stopping.png shows {cap} of {len(curves)} curves; stopping.csv has all")
        add("curves-stopping.png", f"where each stopping signal would have stopped ({metric} on {analysis.split})",
            plots.plot_curves, [(c.key.label, [c]) for c in curves[:cap]], metric.replace("_", " "), marks=marks)
    for against in analysis.against:
        for spec in against.points:
            panels = [plots.PointPanel(f"{spec}={value}", against.series_of(spec, value), reference=1.0)
                      for value in analysis.shown[spec]]
            add(f"upsampling-vs-{slug(against.quantity)}-{slug(spec)}.png",
                f"upsampling ratio per {spec} against {against.quantity}", plots.plot_points, panels,
                against.quantity, "acquired share / pool share")
    names = backbones(list(analysis.runs))
    if len(names) > 1:
        for spec, entries in analysis.upsampling.items():
            panels = [plots.BarPanel(f"{spec}={value}", names, per_backbone(entries, value, names), reference=1.0)
                      for value in analysis.shown[spec]]
            add(f"upsampling-by-backbone-{slug(spec)}.png", f"upsampling ratio per {spec} and backbone",
                plots.plot_bars, panels, "acquired share / pool share")
    return figures, notes


def _group_row(row: dict) -> dict:
    """A cumulative-upsampling curve row with its "SPEC=VALUE" metric split into group and value."""
    spec, _, value = row.pop("metric").partition("=")
    key = {name: row.pop(name) for name in ("backbone", "strategy", "variant") if name in row}
    return {**key, "group": spec, "value": value, **row}


def _estimate_text(e: dict | None, signed: bool = False, digits: int = 3) -> str:
    if e is None or e.get("mean") is None:
        return "–"
    mean = f"{e['mean']:+.{digits}f}" if signed else f"{e['mean']:.{digits}f}"
    if e.get("ci_low") is None:
        return mean
    return f"{mean} ± {(e['ci_high'] - e['ci_low']) / 2:.{digits}f}"


def _summary(analysis: Analysis, out: Path, figures: list[tuple[str, str]], tables: list[str]) -> dict:
    curves = []
    for key, members in analysis.runs.items():
        final: dict = {}
        for metric in analysis.scalar_metrics:
            curve = next((c for c in analysis.curves[metric] if c.key == key), None)
            if curve is not None:
                final[metric] = {"n_labeled": int(curve.n_labeled[-1]), **curve.point(-1).to_dict()}
        curves.append({**key.columns(), "seeds": sorted({r.seed for r in members}),
                       "fingerprints": sorted({r.fingerprint for r in members}),
                       "final": final})
    return {
        "split": analysis.split, "baseline": analysis.baseline, "metric": analysis.config.metric,
        "interval": analysis.config.interval,
        "runs": [{"record": os.path.relpath(r.path, out), **key.columns(), "seed": r.seed, "fingerprint": r.fingerprint,
                  "rounds": len(r.rounds), "complete": r.complete}
                 for key, members in analysis.runs.items() for r in members],
        "curves": curves,
        "comparisons": [c.to_dict() for c in analysis.comparisons],
        "upsampling": [u.to_dict() for entries in analysis.upsampling.values() for u in entries],
        "top_upsampled": [u.to_dict() for u in top_upsampled(analysis)],
        "stopping": [s.to_dict() for s in analysis.stopping],
        "stop_rules": None if analysis.stop_rules is None else analysis.stop_rules.to_dict(),
        "against": [a.to_dict() for a in analysis.against],
        "backbones": backbones(list(analysis.runs)),
        "figures": [{"file": f, "caption": c} for f, c in figures],
        "tables": tables,
        "notes": analysis.notes,
    }


def _strategy(entry: dict) -> str:
    """A table's strategy cell: the strategy, and the sweep cell's values when curves differ in them."""
    return f"{entry['strategy']} ({entry['variant']})" if entry.get("variant") else entry["strategy"]


def _markdown(summary: dict) -> str:
    own = [m for m in dict.fromkeys(m for c in summary["curves"] for m in c["final"]) if m not in HEADLINE_METRICS]
    shown = [m for m in HEADLINE_METRICS if any(m in c["final"] for c in summary["curves"])] + own
    lines = [f"# Active-learning report: {len(summary['runs'])} runs, split `{summary['split']}`", "",
             f"Means over seeds ± the half-width of a 95 % confidence interval ({INTERVAL_TEXT[summary['interval']]}).",
             "",
             "## Final metrics", "",
             "| backbone | strategy | seeds | labels | " + " | ".join(m.replace("_", " ") for m in shown) + " |",
             "|---" * (4 + len(shown)) + "|"]
    for c in summary["curves"]:
        labels = next(iter(c["final"].values()))["n_labeled"] if c["final"] else "–"
        cells = " | ".join(_estimate_text(c["final"].get(m)) for m in shown)
        lines.append(f"| {c['backbone']} | {_strategy(c)} | {len(c['seeds'])} | {labels} | {cells} |")
    if summary["comparisons"]:
        metric = summary["metric"].replace("_", " ")
        lines += ["", f"## Against {summary['baseline']}: labels to reach its final {metric}", "",
                  "Labels include the seed set; the curve is interpolated linearly between rounds, never "
                  "extrapolated. Gain: strategy − baseline at the largest number of labels both reached.", "",
                  "| backbone | strategy | baseline final (labels) | labels to reach | fewer labels | gain (labels) "
                  "| test | p |", "|---" * 8 + "|"]
        for c in summary["comparisons"]:
            reach = "not reached" if c["labels_to_reach"] is None else f"{c['labels_to_reach']:.1f}"
            ratio = "–" if c["ratio"] is None else f"{c['ratio']:.2f}x"
            gain = c["gain"] or {}
            p = "–" if gain.get("p_value") is None else f"{gain['p_value']:.3g}"
            at = f"{_estimate_text(gain, signed=True)} ({c['compared_at']})" if gain else "–"
            lines.append(f"| {c['backbone']} | {_strategy(c)} | {c['target']:.3f} ({c['baseline_labels']}) | {reach} "
                         f"| {ratio} | {at} | {gain.get('test', '–')} | {p} |")
    if summary["top_upsampled"]:
        lines += ["", "## Most upsampled groups", "",
                  "Upsampling ratio = share of the acquisitions / share of the pool (1 = as random sampling; "
                  "the seed set is not counted).", "",
                  "| backbone | strategy | group | value | pool share | ratio |", "|---" * 6 + "|"]
        for u in summary["top_upsampled"]:
            lines.append(f"| {u['backbone']} | {_strategy(u)} | {u['group']} | {u['value']} | "
                         f"{u['pool_share']:.3f} | {_estimate_text(u['ratio'])} |")
    if summary["stopping"]:
        metric = summary["metric"].replace("_", " ")
        lines += ["", "## Where the stopping signals would have stopped", "",
                  "Each signal replayed on the rounds' label-free measures (default thresholds, "
                  "`embedcache.stopping`); a run it never stopped counts with its last round. Stopped: runs "
                  f"stopped before their end. Costs are per-run differences in {metric}: final − at stop, "
                  "best − at stop.", "",
                  f"| backbone | strategy | signal | stopped | median round | median labels (of) | {metric} at stop "
                  "| final | final − stop | best − stop |", "|---" * 10 + "|"]
        for s in summary["stopping"]:
            lines.append(f"| {s['backbone']} | {_strategy(s)} | {s['signal']} | {s['stopped']}/{s['runs']} | "
                         f"{s['median_round']:g} | {s['median_labels']:g} ({s['final_labels']:g}) | "
                         f"{_estimate_text(s['at_stop'])} | {_estimate_text(s['final'])} | "
                         f"{_estimate_text(s['cost_final'], signed=True)} | {_estimate_text(s['cost_best'], signed=True)} |")
    lines += _stop_rules_markdown(summary["stop_rules"])
    for against in summary["against"]:
        lines += _against_markdown(against)
    if len(summary["backbones"]) > 1:
        lines += _backbones_markdown(summary["upsampling"], summary["backbones"])
    lines += ["", "## Figures", ""] + [f"- [{f['caption']}]({f['file']})" for f in summary["figures"]]
    lines += ["", "## Tables", ""] + [f"- [{t}]({t})" for t in summary["tables"]]
    if summary["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def _duration(e: dict) -> str:
    """Wall seconds (mean ± half-width) in the unit that suits them: s, min or h."""
    scale, unit = next(((f, u) for f, u in ((3600, "h"), (60, "min")) if e["mean"] >= f), (1, "s"))
    text = f"{e['mean'] / scale:.3g}"
    if e.get("ci_low") is not None:
        text += f" ± {(e['ci_high'] - e['ci_low']) / 2 / scale:.2g}"
    return f"{text} {unit}"


def _setting(entry: dict) -> str:
    return f"{entry['backbone']} | {_strategy(entry)}"


def _stop_rules_markdown(rules: dict | None) -> list[str]:
    if rules is None:
        return []
    metric = rules["metric"]
    lines = ["", "## Stop rules", "",
             f"Final {metric.replace('_', ' ')}, wall time and optimizer steps per run (training + acquisition, "
             "summed over rounds), mean over seeds ± the 95 % half-width.", "",
             f"| backbone | strategy | stop | seeds | final {metric.replace('_', ' ')} | wall time | steps |",
             "|---" * 7 + "|"]
    for r in rules["rules"]:
        lines.append(f"| {_setting(r)} | {r['stop']} | {r['seeds']} | {_estimate_text(r[metric])} | "
                     f"{_duration(r['seconds'])} | {_estimate_text(r['steps'], digits=1)} |")
    if rules["differences"]:
        lines += ["", "Each rule against the reference one on the same backbone, strategy and settings: differences "
                      "paired by seed set (paired t interval and test; Welch's when the seeds differ).", "",
                  f"| backbone | strategy | stop − reference | seeds | {metric.replace('_', ' ')} | p "
                  "| wall time (s) | p | steps | p |", "|---" * 10 + "|"]
        for d in rules["differences"]:
            cells = []
            for name, digits in ((metric, 3), ("seconds", 1), ("steps", 1)):
                p = d[name]["p_value"]
                cells += [_estimate_text(d[name], signed=True, digits=digits), "–" if p is None else f"{p:.3g}"]
            seeds = f"{d[metric]['n_a']}" + ("" if d[metric]["test"] == "paired t" else f" / {d[metric]['n_b']}")
            lines.append(f"| {_setting(d)} | {d['stop']} − {d['against']} | {seeds} | {' | '.join(cells)} |")
    return lines


def _subgroups(entries: list[dict]) -> list[dict]:
    """The entries of combined groups (label*place) when there are any: the subgroups the paper's figures show."""
    combined = [e for e in entries if "*" in e["group"]]
    return combined or entries


def _against_markdown(against: dict) -> list[str]:
    quantity = against["quantity"]
    xs = sorted({p[quantity] for p in against["points"]})
    lines = ["", f"## Upsampling against {quantity}", "",
             f"Upsampling ratio of each group value at each {quantity} of the data (read from the runs' dataset "
             f"parameters), mean over seeds ± the 95 % half-width; upsampling-vs-{slug(quantity)}.csv has every "
             "group.", "",
             "| backbone | strategy | group | value | " + " | ".join(f"{quantity}={x:g}" for x in xs) + " |",
             "|---" * (4 + len(xs)) + "|"]
    rows: dict[tuple, dict] = {}
    for p in _subgroups(against["points"]):
        rows.setdefault((p["backbone"], _strategy(p), p["group"], p["value"]), {})[p[quantity]] = p["ratio"]
    for (backbone, strategy, group, value), ratios in rows.items():
        cells = " | ".join(_estimate_text(ratios.get(x)) for x in xs)
        lines.append(f"| {backbone} | {strategy} | {group} | {value} | {cells} |")
    return lines


def _backbones_markdown(upsampling: list[dict], names: list[str]) -> list[str]:
    lines = ["", "## Upsampling per backbone", "",
             "Upsampling ratio of each group value per backbone, mean over seeds ± the 95 % half-width; "
             "upsampling.csv has every group.", "",
             "| strategy | group | value | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
    rows: dict[tuple, dict] = {}
    for u in _subgroups(upsampling):
        rows.setdefault((_strategy(u), u["group"], u["value"]), {})[u["backbone"]] = u["ratio"]
    for (strategy, group, value), ratios in rows.items():
        lines.append(f"| {strategy} | {group} | {value} | " + " | ".join(_estimate_text(ratios.get(b)) for b in names)
                     + " |")
    return lines


def report_folder(out_dir: str | Path, overwrite: bool = False) -> OutputFolder:
    """The report's output folder, checked (see `embedcache.outputs.OutputFolder`)."""
    return OutputFolder(out_dir, "report", overwrite)


def write_report(runs: Sequence[Run], out_dir: str | Path | OutputFolder, config: ReportConfig | None = None,
                 progress: Progress | None = None, overwrite: bool = False) -> dict:
    """Analyse `runs` and write the report into `out_dir` (see the module docstring); returns the summary.
    An earlier report there is replaced only with `overwrite`, once the new one is complete."""
    folder = out_dir if isinstance(out_dir, OutputFolder) else report_folder(out_dir, overwrite)
    analysis = analyse(runs, config)
    with folder.writing() as out:
        figures, notes = _figures(analysis, out)
        analysis.notes.extend(notes)
        for done, (_, _, draw) in enumerate(figures, start=1):
            draw()
            if progress:
                progress(done, len(figures))
        tables = {
            "curves.csv": [row for curves in analysis.curves.values() for c in curves for row in c.rows()],
            "comparisons.csv": [_flat(c.to_dict()) for c in analysis.comparisons],
            "upsampling.csv": [u.row() for entries in analysis.upsampling.values() for u in entries],
            "upsampling-rounds.csv": [_group_row(row) for curves in analysis.cumulative.values() for c in curves
                                      for row in c.rows()],
            "stopping.csv": [_flat(s.to_dict()) for s in analysis.stopping],
            "stopping-runs.csv": [s.row() for s in analysis.stop_runs],
        }
        rules = analysis.stop_rules
        if rules is not None:
            tables["stop-rules.csv"] = [r.row(rules.metric) for r in rules.rules]
            tables["stop-rule-differences.csv"] = [row for d in rules.differences for row in d.rows(rules.metric)]
        for against in analysis.against:
            tables[f"upsampling-vs-{slug(against.quantity)}.csv"] = against.rows()
        written = []
        for name, rows in tables.items():
            if rows:
                write_csv(out / name, rows)
                written.append(name)
        summary = _summary(analysis, folder.path, [(f, c) for f, c, _ in figures], written)
        (out / "summary.md").write_text(_markdown(summary), encoding="utf-8")
        write_json(out / SUMMARY, summary)
    return summary


def _flat(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}_"))
        else:
            flat[f"{prefix}{k}"] = v
    return flat
