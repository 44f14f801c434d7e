"""Stopping signals: when more labels are unlikely to change the model. Label-free: they read only
the predictions successive models make on a fixed *stop set* (unlabelled examples drawn once, with
the seed, from the pool).

Each round's model is summarised by its `Measures` on the stop set (`measure`: from its class
probabilities and the previous round's predicted classes): Cohen's κ and the share of changed
predictions against the previous round, and the mean and largest normalised entropy. The simulated
AL loop records them in every round (`RoundRecord.stopping`); the labelling page and `suggest` take
a round to be every `round_size` labels. The signals are functions of the measures of the rounds so
far, oldest first:

* `stabilizing-predictions`: the mean Cohen's κ between successive rounds' predicted classes over
  the last `window` pairs; stop when it is >= 0.99 (window 3). Bloodgood & Vijay-Shanker (2009),
  "A Method for Stopping Active Learning Based on Stabilizing Predictions".
* `overall-uncertainty`: the mean normalised entropy (entropy / log C) of the last round; stop at
  <= 0.05. Zhu, Wang & Hovy (2008), overall uncertainty.
* `max-confidence`: the largest normalised entropy of the last round, its least sure example; stop
  at <= 0.001. Zhu, Wang & Hovy (2008), max-confidence (they apply it to the examples selected
  next; the stop set's most uncertain example stands in for them).
* `prediction-change`: the largest share of stop-set examples whose predicted class changed
  between successive rounds, over the last `window` pairs; stop at <= 0.005 (window 3). Ours: the
  label-free "how much does the model still change", the quantity κ is computed from, as a share a
  person reads directly.

Each signal is a `Signal` with the value (None until there are enough rounds), the threshold and
whether it says stop; `first_stops` finds the round where each would first have stopped a run.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

#: The signals, in the order they are listed everywhere.
SIGNALS = ("stabilizing-predictions", "overall-uncertainty", "max-confidence", "prediction-change")
#: Examples in a stop set (Bloodgood & Vijay-Shanker use 2,000): simulated runs and the labelling page.
STOP_SET_SIZE = 2000
#: Pairs of successive rounds the κ and prediction-change signals look back over.
WINDOW = 3


@dataclasses.dataclass(frozen=True)
class Signal:
    name: str
    value: float | None  # None: not enough rounds yet
    threshold: float
    stop: bool
    rule: str  # what the value is and when it says stop, for people

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Measures:
    """One round's model on the stop set. kappa and changed compare its predicted classes with the
    previous round's model (None in the first round); uncertainty and max_uncertainty are the mean
    and largest normalised entropy of its probabilities."""

    kappa: float | None
    changed: float | None
    uncertainty: float
    max_uncertainty: float


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's κ of two label vectors: (p_o - p_e) / (1 - p_e), with p_o the observed agreement and
    p_e the agreement expected from each vector's class frequencies. Two identical constant vectors
    (p_e = 1) agree perfectly: κ = 1."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"κ needs two non-empty label vectors of one length, got {a.shape} and {b.shape}")
    observed = float(np.mean(a == b))
    classes = np.union1d(a, b)
    expected = float(sum(np.mean(a == c) * np.mean(b == c) for c in classes))
    if expected >= 1.0:
        return 1.0
    return (observed - expected) / (1.0 - expected)


def normalized_entropy(proba: np.ndarray) -> np.ndarray:
    """Entropy of each row divided by log C (0 = certain, 1 = uniform); 0 log 0 = 0; 0 when C = 1."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape[1] < 2:
        return np.zeros(len(proba))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(proba > 0, proba * np.log(proba), 0.0)
    return -terms.sum(axis=1) / np.log(proba.shape[1])


def measure(proba: np.ndarray, previous: np.ndarray | None) -> tuple[Measures, np.ndarray]:
    """The `Measures` of one round from its stop-set probabilities `[n, C]` and the previous round's
    predicted classes (None in the first round); also this round's predicted classes, the next
    round's `previous`. The one place a round's measures are computed: every runner of rounds calls it."""
    proba = np.asarray(proba)
    predicted = proba.argmax(axis=1)
    entropy = normalized_entropy(proba)
    kappa = changed = None
    if previous is not None:
        kappa, changed = cohen_kappa(previous, predicted), float(np.mean(previous != predicted))
    return Measures(kappa, changed, float(entropy.mean()), float(entropy.max())), predicted


def measures_of(history: Sequence[np.ndarray]) -> list[Measures]:
    """The measures of each round of a history of stop-set probabilities, oldest first."""
    measures, previous = [], None
    for proba in history:
        m, previous = measure(proba, previous)
        measures.append(m)
    return measures


def _pairs(measures: Sequence[Measures], field: str) -> list[float]:
    """A pairwise measure of every round after the first."""
    return [getattr(m, field) for m in measures[1:]]


def stabilizing_predictions(measures: Sequence[Measures], threshold: float = 0.99, window: int = WINDOW) -> Signal:
    """Mean κ of the last `window` pairs of successive rounds; stop when it reaches `threshold`."""
    kappas = _pairs(measures, "kappa")
    value = float(np.mean(kappas[-window:])) if len(kappas) >= window else None
    return Signal("stabilizing-predictions", value, threshold, value is not None and value >= threshold,
                  f"mean Cohen's kappa of successive rounds' predictions on the stop set, last {window} pairs; "
                  f"stop at >= {threshold}")


def overall_uncertainty(measures: Sequence[Measures], threshold: float = 0.05) -> Signal:
    """Mean normalised entropy of the last round; stop when it falls to `threshold`."""
    value = measures[-1].uncertainty if len(measures) else None
    return Signal("overall-uncertainty", value, threshold, value is not None and value <= threshold,
                  f"mean normalised entropy on the stop set; stop at <= {threshold}")


def max_confidence(measures: Sequence[Measures], threshold: float = 0.001) -> Signal:
    """Largest normalised entropy of the last round; stop when even the least sure example is below `threshold`."""
    value = measures[-1].max_uncertainty if len(measures) else None
    return Signal("max-confidence", value, threshold, value is not None and value <= threshold,
                  f"largest normalised entropy on the stop set (its least sure example); stop at <= {threshold}")


def prediction_change(measures: Sequence[Measures], threshold: float = 0.005, window: int = WINDOW) -> Signal:
    """Largest share of changed predictions over the last `window` pairs of rounds; stop at `threshold`."""
    changes = _pairs(measures, "changed")
    value = max(changes[-window:]) if len(changes) >= window else None
    return Signal("prediction-change", value, threshold, value is not None and value <= threshold,
                  f"share of stop-set predictions that changed between successive rounds, largest of the last "
                  f"{window}; stop at <= {threshold}")


def stopping_signals(measures: Sequence[Measures]) -> list[Signal]:
    """Every signal with its default threshold, after the last of `measures`."""
    return [stabilizing_predictions(measures), overall_uncertainty(measures), max_confidence(measures),
            prediction_change(measures)]


def first_stops(measures: Sequence[Measures]) -> dict[str, int | None]:
    """Signal name → the first round (index into `measures`) after which it says stop; None if it never does."""
    stops: dict[str, int | None] = dict.fromkeys(SIGNALS)
    for r in range(len(measures)):
        for signal in stopping_signals(measures[:r + 1]):
            if signal.stop and stops[signal.name] is None:
                stops[signal.name] = r
    return stops
