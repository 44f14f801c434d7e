"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from embedcache.errors import ConfigError
from embedcache.metadata import Metadata
from embedcache.metrics import EvalSpec, class_balanced_accuracy, evaluate, group_column, macro_f1

#            0  1  2  3  4  5  6  7
Y_TRUE = np.array([0, 0, 0, 1, 1, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 1, 0, 2, 2])
META = Metadata.from_values(
    ids=[f"e{i}" for i in range(8)], labels=Y_TRUE.tolist(), splits=["val"] * 8,
    groups={"place": ["land", "water", "land", "water", "land", "land", "water", "water"],
            "user": ["u1", "u1", "u2", "u2", "u2", "u3", "u3", "u4"]},
    label_names=["a", "b", "c"])


def test_accuracy_groups_and_worst_group():
    result = evaluate(Y_TRUE, Y_PRED, META, EvalSpec(groups=("place", "label*place"), worst_group="label*place"))
    assert result["n"] == 8 and result["accuracy"] == pytest.approx(5 / 8)
    assert result["groups"]["place"] == {"land": {"n": 4, "accuracy": 0.5}, "water": {"n": 4, "accuracy": 0.75}}
    combos = result["groups"]["label*place"]
    assert combos == {"a*land": {"n": 2, "accuracy": 0.5}, "a*water": {"n": 1, "accuracy": 1.0},
                      "b*land": {"n": 2, "accuracy": 0.5}, "b*water": {"n": 2, "accuracy": 0.5},
                      "c*water": {"n": 1, "accuracy": 1.0}}
    # three values tie at 0.5: the worst group is the first by name
    assert result["worst_group"] == {"group": "label*place", "value": "a*land", "accuracy": 0.5}


def test_class_balanced_macro_f1_and_user_percentile():
    # recalls: a 2/3, b 2/4, c 1/1
    assert class_balanced_accuracy(Y_TRUE, Y_PRED) == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    # F1: a: p=2/3 r=2/3 -> 2/3; b: p=2/3 r=1/2 -> 4/7; c: p=1/2 r=1 -> 2/3
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx((2 / 3 + 4 / 7 + 2 / 3) / 3)
    # macro F1 averages over classes present in y_true only (WILDS): class 3 predicted but absent
    assert macro_f1(np.array([0, 0]), np.array([0, 3])) == pytest.approx(2 / 3)
    result = evaluate(Y_TRUE, Y_PRED, META, EvalSpec(metrics=("macro_f1", "class_balanced_accuracy"),
                                                     percentiles=(("user", 10),)))
    # per-user accuracy: u1 1.0, u2 2/3, u3 0.0, u4 1.0 -> sorted [0, 2/3, 1, 1]; 10th pct = 0.3 * 2/3
    assert result["user_accuracy_p10"] == pytest.approx(0.3 * 2 / 3)
    assert set(result) == {"n", "accuracy", "macro_f1", "class_balanced_accuracy", "user_accuracy_p10"}


def test_group_specs():
    codes, names = group_column(META, "place*label")
    assert names == ("land*a", "land*b", "land*c", "water*a", "water*b", "water*c")
    assert names[codes[3]] == "water*b"
    with pytest.raises(ConfigError, match="unknown group 'bird'"):
        EvalSpec(groups=("bird*place",)).check(META)
    with pytest.raises(ConfigError, match="unknown metric"):
        EvalSpec(metrics=("f2",))
