"""Stopping signals and the per-round measures they read, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedcache.stopping import (Measures, cohen_kappa, first_stops, max_confidence, measure, measures_of,
                                 normalized_entropy, overall_uncertainty, prediction_change, stabilizing_predictions,
                                 stopping_signals)


def _onehot(labels, confidence=0.9):
    """Two-class probabilities whose argmax is `labels`."""
    labels = np.asarray(labels)
    return np.stack([np.where(labels == c, confidence, 1 - confidence) for c in (0, 1)], axis=1)


def test_cohen_kappa_by_hand():
    # agreement 3/4; marginals (1/2, 1/2) and (1/4, 3/4): p_e = 1/8 + 3/8 = 1/2, κ = (3/4 - 1/2) / (1/2) = 1/2
    assert cohen_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.5)
    # agreement 1/3; three classes, each marginal 1/3 on both sides: p_e = 1/3, κ = 0
    assert cohen_kappa([0, 1, 2], [0, 2, 1]) == pytest.approx(0.0)
    # complete disagreement on balanced labels: p_o = 0, p_e = 1/2, κ = -1
    assert cohen_kappa([0, 1], [1, 0]) == pytest.approx(-1.0)
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) == 1.0  # both constant and equal: p_e = 1
    with pytest.raises(ValueError):
        cohen_kappa([0, 1], [0])


def test_normalized_entropy_by_hand():
    h = normalized_entropy(np.array([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]]))
    expected_09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)  # 0.46900
    assert h == pytest.approx([1.0, 0.0, expected_09])
    assert expected_09 == pytest.approx(0.469, abs=1e-3)
    # three classes (1/4, 1/4, 1/2): H = 1.5 ln 2, divided by ln 3
    assert normalized_entropy(np.array([[0.25, 0.25, 0.5]]))[0] == pytest.approx(1.5 * math.log(2) / math.log(3))
    assert normalized_entropy(np.ones((2, 1))).tolist() == [0.0, 0.0]


def test_stabilizing_predictions_and_prediction_change_over_rounds():
    rounds = measures_of([_onehot([0, 0, 1, 1]), _onehot([0, 1, 1, 1]), _onehot([0, 1, 1, 1]), _onehot([0, 1, 1, 1])])
    assert [m.kappa for m in rounds] == [None, pytest.approx(0.5), 1.0, 1.0]
    assert [m.changed for m in rounds] == [None, 0.25, 0.0, 0.0]
    sp = stabilizing_predictions(rounds[:3])
    assert sp.value is None and not sp.stop  # two pairs < window 3
    sp = stabilizing_predictions(rounds)  # κ = 0.5, 1, 1 → mean 5/6
    assert sp.value == pytest.approx(5 / 6) and not sp.stop and sp.threshold == 0.99
    change = prediction_change(rounds)  # 1/4, 0, 0 changed → the largest, 0.25
    assert change.value == pytest.approx(0.25) and not change.stop
    rounds.append(measure(_onehot([0, 1, 1, 1]), np.array([0, 1, 1, 1]))[0])
    assert stabilizing_predictions(rounds).value == 1.0 and stabilizing_predictions(rounds).stop
    assert prediction_change(rounds).value == 0.0 and prediction_change(rounds).stop
    assert stabilizing_predictions(rounds, threshold=0.99, window=4).value == pytest.approx(0.875)


def test_measure_returns_the_predictions_the_next_round_compares_with():
    first, predicted = measure(np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]]), None)
    assert predicted.tolist() == [0, 0, 1] and first.kappa is None and first.changed is None
    assert first.max_uncertainty == 1.0 and first.uncertainty == pytest.approx((0.468996 + 1 + 0.721928) / 3, abs=1e-6)
    second, _ = measure(np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8]]), predicted)
    assert second.changed == pytest.approx(1 / 3) and second.kappa == pytest.approx(cohen_kappa([0, 0, 1], [0, 1, 1]))


def test_uncertainty_signals_read_the_last_round():
    confident = np.array([[0.9999, 0.0001], [0.0001, 0.9999]])
    unsure = np.array([[0.5, 0.5], [0.9, 0.1]])
    ou = overall_uncertainty(measures_of([confident, unsure]))  # mean of 1 and 0.469
    assert ou.value == pytest.approx((1 + 0.4689955935892812) / 2) and not ou.stop
    assert overall_uncertainty(measures_of([unsure, confident])).stop
    mc = max_confidence(measures_of([unsure]))
    assert mc.value == pytest.approx(1.0) and not mc.stop and mc.threshold == 0.001
    tiny = -(0.9999 * math.log(0.9999) + 0.0001 * math.log(0.0001)) / math.log(2)  # 0.00147: above 0.001
    assert max_confidence(measures_of([confident])).value == pytest.approx(tiny)
    assert not max_confidence(measures_of([confident])).stop
    assert max_confidence(measures_of([np.array([[1.0, 0.0]])])).stop
    assert overall_uncertainty([]).value is None


def test_every_signal_is_listed_with_its_default():
    names = [(s.name, s.threshold) for s in stopping_signals(measures_of([_onehot([0, 1])]))]
    assert names == [("stabilizing-predictions", 0.99), ("overall-uncertainty", 0.05), ("max-confidence", 0.001),
                     ("prediction-change", 0.005)]


def test_first_stops_names_the_round_each_signal_first_says_stop():
    rounds = [Measures(None, None, 0.5, 0.9), Measures(0.5, 0.3, 0.2, 0.9), Measures(1.0, 0.0, 0.04, 0.9),
              Measures(1.0, 0.0, 0.06, 0.9), Measures(1.0, 0.0, 0.01, 0.0005), Measures(1.0, 0.0, 0.01, 0.0005),
              Measures(1.0, 0.0, 0.01, 0.0005)]
    # κ over the last 3 pairs: (0.5, 1, 1) after round 3, (1, 1, 1) after round 4; the largest change likewise
    assert first_stops(rounds) == {"stabilizing-predictions": 4, "overall-uncertainty": 2, "max-confidence": 4,
                                   "prediction-change": 4}
    assert first_stops(rounds[:2]) == dict.fromkeys(["stabilizing-predictions", "overall-uncertainty",
                                                     "max-confidence", "prediction-change"])
