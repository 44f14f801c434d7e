"""Where the stopping signals would have stopped each run, and what stopping there would have cost.

Every run whose rounds record stopping measures (`RoundRecord.stopping`, see `embedcache.stopping`)
is replayed round by round with each signal at its default threshold: the run would have stopped
after the first round at which the signal says stop (`embedcache.stopping.first_stops`), or run to
its last round when it never does. The model kept is that round's; the metric is read at the first
evaluated round at or after it (that round itself when every round is evaluated).

Per curve and signal (`StopSummary`): how many runs the signal stopped early, the median round and
number of labels at the stop (runs it never stopped count with their last round), the metric at
the stop and at the end, and what stopping cost: final − at stop and best − at stop per run (best:
the run's highest evaluated value), each a mean over runs ± 95 % CI (`stats.estimate`). Only
complete runs take part: an unfinished run has no final value to compare with.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from embedcache.analysis.curves import CurveKey
from embedcache.analysis.stats import Estimate, estimate
from embedcache.records import Run
from embedcache.stopping import SIGNALS, first_stops


@dataclasses.dataclass(frozen=True)
class RunStop:
    """One signal on one run: the round it stopped after (None: never, the run went to its last round
    `at`), the labels and metric there, and the run's final and best metric."""

    key: CurveKey
    run: Run
    signal: str
    stopped: int | None
    at: int
    n_labeled: int
    value: float
    final: float
    best: float

    def row(self) -> dict:
        return {**self.key.columns(), "seed": self.run.seed, "record": self.run.path.name, "signal": self.signal,
                "stopped": self.stopped is not None, "round": self.at, "n_labeled": self.n_labeled,
                "at_stop": self.value, "final": self.final, "best": self.best}


@dataclasses.dataclass(frozen=True)
class StopSummary:
    """One signal over the runs of one curve (see the module docstring)."""

    key: CurveKey
    signal: str
    metric: str
    runs: int
    stopped: int
    median_round: float
    median_labels: float
    final_labels: float
    at_stop: Estimate
    final: Estimate
    cost_final: Estimate
    cost_best: Estimate

    def to_dict(self) -> dict:
        return {**self.key.columns(), "signal": self.signal, "metric": self.metric, "runs": self.runs,
                "stopped": self.stopped, "median_round": self.median_round, "median_labels": self.median_labels,
                "final_labels": self.final_labels, "at_stop": self.at_stop.to_dict(), "final": self.final.to_dict(),
                "cost_final": self.cost_final.to_dict(), "cost_best": self.cost_best.to_dict()}


def measured(run: Run) -> bool:
    """Whether every round of a complete run records its stopping measures."""
    return run.complete and bool(run.rounds) and all(r.stopping is not None for r in run.rounds)


def run_stops(key: CurveKey, run: Run, split: str, metric: str) -> list[RunStop]:
    """Each signal's stop on one measured run (`measured`) that evaluated `metric` on `split`."""
    evaluated = [(r.round, r.n_labeled, value) for r in run.rounds
                 if split in r.metrics and (value := r.metrics[split].value(metric)) is not None]
    if not evaluated:
        return []
    final, best = evaluated[-1][2], max(v for _, _, v in evaluated)
    stops = []
    for signal, stopped in first_stops([r.stopping for r in run.rounds]).items():
        at, n_labeled, value = next(e for e in evaluated if e[0] >= (evaluated[-1][0] if stopped is None else stopped))
        stops.append(RunStop(key, run, signal, stopped, at, n_labeled, value, final, best))
    return stops


def summarise(key: CurveKey, stops: Sequence[RunStop], metric: str, interval: str = "t") -> list[StopSummary]:
    """One `StopSummary` per signal of one curve's run stops."""
    summaries = []
    for signal in SIGNALS:
        mine = [s for s in stops if s.signal == signal]
        if not mine:
            continue
        summaries.append(StopSummary(
            key, signal, metric, len(mine), sum(s.stopped is not None for s in mine),
            float(np.median([s.at for s in mine])), float(np.median([s.n_labeled for s in mine])),
            float(np.median([s.run.rounds[-1].n_labeled for s in mine])),
            estimate([s.value for s in mine], interval), estimate([s.final for s in mine], interval),
            estimate([s.final - s.value for s in mine], interval), estimate([s.best - s.value for s in mine], interval)))
    return summaries


def stopping_points(groups: dict[CurveKey, list[Run]], split: str, metric: str,
                    interval: str = "t") -> tuple[list[StopSummary], list[RunStop], list[str]]:
    """Summaries and per-run stops of every curve's measured runs, and notes on the runs left out."""
    summaries, every, notes = [], [], []
    left_out = [r for members in groups.values() for r in members if not measured(r)]
    for key, members in groups.items():
        stops = [s for run in members if measured(run) for s in run_stops(key, run, split, metric)]
        every += stops
        summaries += summarise(key, stops, metric, interval)
    if summaries and left_out:
        notes.append(f"{len(left_out)} run(s) are left out of the stopping table: unfinished, or recorded without "
                     f"stopping measures (made before they were recorded, or with stop_set_size 0), e.g. "
                     f"{left_out[0].path.name}")
    return summaries, every, notes
