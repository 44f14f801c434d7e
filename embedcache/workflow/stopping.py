"""Stopping signals: when more labels are unlikely to change the model. Pure functions of the
predictions successive models make on a fixed *stop set* (unlabelled examples drawn once, with the
seed, from the pool: no labels are needed).

`history` is a list of `[n, C]` class probabilities on the stop set, one per round (the page and
`suggest` take a round to be every `round_size` labels), oldest first.

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

Each function returns a `Signal` with the value (None until there are enough rounds), the
threshold and whether it says stop.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Signal:
    name: str
    value: float | None  # None: not enough rounds yet
    threshold: float
    stop: bool
    rule: str  # what the value is and when it says stop, for people

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def _predictions(history: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(p).argmax(axis=1) for p in history]


def stabilizing_predictions(history: Sequence[np.ndarray], threshold: float = 0.99, window: int = 3) -> Signal:
    """Mean κ of the last `window` pairs of successive rounds; stop when it reaches `threshold`."""
    labels = _predictions(history)
    kappas = [cohen_kappa(a, b) for a, b in zip(labels[:-1], labels[1:])]
    value = float(np.mean(kappas[-window:])) if len(kappas) >= window else None
    return Signal("stabilizing-predictions", value, threshold, value is not None and value >= threshold,
                  f"mean Cohen's kappa of successive rounds' predictions on the stop set, last {window} pairs; "
                  f"stop at >= {threshold}")


def overall_uncertainty(history: Sequence[np.ndarray], threshold: float = 0.05) -> Signal:
    """Mean normalised entropy of the last round; stop when it falls to `threshold`."""
    value = float(normalized_entropy(history[-1]).mean()) if len(history) else None
    return Signal("overall-uncertainty", value, threshold, value is not None and value <= threshold,
                  f"mean normalised entropy on the stop set; stop at <= {threshold}")


def max_confidence(history: Sequence[np.ndarray], threshold: float = 0.001) -> Signal:
    """Largest normalised entropy of the last round; stop when even the least sure example is below `threshold`."""
    value = float(normalized_entropy(history[-1]).max()) if len(history) else None
    return Signal("max-confidence", value, threshold, value is not None and value <= threshold,
                  f"largest normalised entropy on the stop set (its least sure example); stop at <= {threshold}")


def prediction_change(history: Sequence[np.ndarray], threshold: float = 0.005, window: int = 3) -> Signal:
    """Largest share of changed predictions over the last `window` pairs of rounds; stop at `threshold`."""
    labels = _predictions(history)
    changes = [float(np.mean(a != b)) for a, b in zip(labels[:-1], labels[1:])]
    value = max(changes[-window:]) if len(changes) >= window else None
    return Signal("prediction-change", value, threshold, value is not None and value <= threshold,
                  f"share of stop-set predictions that changed between successive rounds, largest of the last "
                  f"{window}; stop at <= {threshold}")


def stopping_signals(history: Sequence[np.ndarray]) -> list[Signal]:
    """Every signal with its default threshold."""
    return [stabilizing_predictions(history), overall_uncertainty(history), max_confidence(history),
            prediction_change(history)]
