"""Analysis computations against hand-computed values on tiny hand-written run records."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import recipe
from scipy import stats

from embedcache.analysis.acquisitions import acquisition_specs, cumulative_upsampling, pool_counts, upsampling
from embedcache.analysis.curves import CurveKey, compare, curve_metrics, group_runs, learning_curve
from embedcache.analysis.stats import difference, estimate, labels_to_reach
from embedcache.cache import EmbeddingCache
from embedcache.errors import ConfigError
from embedcache.metadata import Metadata
from embedcache.records import RecordError, read_runs

FINGERPRINT = "f" * 64
KEY_A, KEY_B = CurveKey("bb", "least-confidence"), CurveKey("bb", "random")


def write_record(folder, strategy, seed, accuracies, acquired=(), *, fingerprint=FINGERPRINT, backbone="bb",
                 pool=None, source=None, groups=None):
    """A run record by hand: round r evaluates accuracy accuracies[r] with 10·(r+1) labels (or
    groups[r]) and acquires acquired[r] = [(label, place), ...]."""
    pool = pool if pool is not None else {"label": {"a": 50, "b": 50}, "place": {"land": 80, "water": 20},
                                          "label*place": {"a*land": 45, "a*water": 5, "b*land": 35, "b*water": 15}}
    header = {"type": "header", "schema": 1, "mode": "linear", "strategy": strategy, "seed": seed,
              "fingerprint": fingerprint, "backbone": backbone, "protocol": {"pool_split": "train"},
              "n_rounds": len(accuracies), "seed_ids": ["s0", "s1"], "seed_groups": {"label": ["a", "b"],
                                                                                     "place": ["land", "land"]},
              "pool_counts": pool, "source": source or {"fingerprint": fingerprint}}
    lines = [header]
    for r, acc in enumerate(accuracies):
        batch = list(acquired[r]) if r < len(acquired) else []
        metrics = {"n": 100, "accuracy": acc}
        if groups is not None:
            metrics["groups"] = {"place": groups[r]}
            metrics["worst_group"] = {"group": "place", "value": min(groups[r], key=lambda v: groups[r][v]["accuracy"]),
                                      "accuracy": min(g["accuracy"] for g in groups[r].values())}
        lines.append({"type": "round", "round": r, "n_labeled": 10 * (r + 1), "metrics": {"val": metrics},
                      "acquired": {"ids": [f"{strategy}{seed}-{r}-{i}" for i in range(len(batch))],
                                   "scores": [0.0] * len(batch),
                                   "groups": {"label": [b[0] for b in batch], "place": [b[1] for b in batch]}},
                      "training": {}, "pool_size": 100, "seconds": 0.1})
    path = folder / f"{strategy}-seed{seed}.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# ---------------------------------------------------------------------- statistics
def test_estimate_is_scipys_t_interval_by_default_and_the_papers_gaussian_on_request():
    values = [0.5, 0.6, 0.7]
    e = estimate(values)
    assert e.mean == pytest.approx(0.6) and e.n == 3
    assert e.sd == pytest.approx(0.1)
    assert (e.low, e.high) == pytest.approx(stats.t.interval(0.95, 2, loc=0.6, scale=stats.sem(values)))
    assert (e.low, e.high) == pytest.approx(tuple(stats.ttest_1samp(values, 0).confidence_interval(0.95)))
    g = estimate(values, "gaussian")
    assert g.half_width == pytest.approx(1.96 * 0.1 / math.sqrt(3), rel=1e-4)  # the paper's z = 1.96
    assert (g.low, g.high) == pytest.approx((0.6 - 0.113161, 0.6 + 0.113161), abs=1e-5)
    one = estimate([0.4])
    assert one.sd is None and one.half_width is None and one.low is None
    with pytest.raises(ConfigError, match="unknown confidence interval 'z'"):
        estimate(values, "z")


def test_labels_to_reach_interpolates_stays_and_never_extrapolates():
    x, y = [10, 20, 30], [0.55, 0.75, 0.9]
    assert labels_to_reach(x, y, 0.8) == pytest.approx(20 + (0.8 - 0.75) / (0.9 - 0.75) * 10)  # 23.33
    assert labels_to_reach(x, y, 0.75) == 20
    assert labels_to_reach(x, y, 0.5) == 10  # already reached by the first round
    assert labels_to_reach(x, y, 0.95) is None  # never reached: no extrapolation past 30
    assert labels_to_reach([10, 20, 30], [0.6, 0.5, 0.7], 0.65) == pytest.approx(27.5)  # crossing up
    # reach and stay: a curve that touches the target and falls back has not reached it yet
    assert labels_to_reach([10, 20, 30, 40], [0.6, 0.7, 0.6, 0.8], 0.65) == pytest.approx(32.5)
    assert labels_to_reach([10, 20], [0.7, 0.6], 0.65) is None


def test_difference_is_paired_on_matching_seeds_and_welch_otherwise():
    a, b = [(0, 0.9), (1, 0.9)], [(1, 0.85), (0, 0.75)]
    paired = difference(a, b)
    assert paired.test == "paired t" and paired.mean == pytest.approx(0.1)
    scipy_paired = stats.ttest_rel([0.9, 0.9], [0.75, 0.85])
    low, high = scipy_paired.confidence_interval(0.95)  # diffs 0.15, 0.05
    assert (paired.mean - paired.half_width, paired.mean + paired.half_width) == pytest.approx((low, high))
    assert paired.statistic == pytest.approx(2.0) and paired.p_value == pytest.approx(scipy_paired.pvalue)
    assert low < 0 < high and paired.p_value > 0.05  # the interval and the test tell one story
    gaussian = difference(a, b, "gaussian")
    assert gaussian.half_width == pytest.approx(1.96 * math.sqrt(0.005) / math.sqrt(2), rel=1e-4)
    welch = difference([(0, 0.9), (1, 0.8), (2, 0.7)], [(5, 0.6), (6, 0.5)])
    scipy_welch = stats.ttest_ind([0.9, 0.8, 0.7], [0.6, 0.5], equal_var=False)
    assert welch.test == "Welch t" and welch.mean == pytest.approx(0.25)
    assert (welch.mean - welch.half_width, welch.mean + welch.half_width) == pytest.approx(
        tuple(scipy_welch.confidence_interval(0.95)))
    assert welch.p_value == pytest.approx(scipy_welch.pvalue)
    assert difference([(0, 0.9), (1, 0.8), (2, 0.7)], [(5, 0.6), (6, 0.5)], "gaussian").half_width == pytest.approx(
        1.96 * math.sqrt(0.01 / 3 + 0.005 / 2), rel=1e-4)
    assert difference([(0, 0.9)], [(0, 0.8)]).half_width is None  # one seed: no interval, no test


# ---------------------------------------------------------------------- curves and labels-to-reach
@pytest.fixture
def hand_runs(tmp_path):
    folder = tmp_path / "runs"
    acquire = [[("a", "water"), ("b", "water"), ("a", "land")], [("b", "water"), ("b", "land")]]
    write_record(folder, "least-confidence", 0, [0.5, 0.7, 0.9], acquire)
    write_record(folder, "least-confidence", 1, [0.6, 0.8, 0.9],
                 [[("a", "land"), ("a", "land"), ("b", "water")], [("b", "land"), ("a", "land")]])
    write_record(folder, "random", 0, [0.5, 0.6, 0.75], acquire)
    write_record(folder, "random", 1, [0.5, 0.6, 0.85], acquire)
    return folder


def test_learning_curve_means_and_bands(hand_runs):
    groups = group_runs(read_runs([hand_runs]))
    assert list(groups) == [KEY_A, KEY_B]
    curve = learning_curve(KEY_A, groups[KEY_A], "val")
    assert curve.n_labeled.tolist() == [10, 20, 30] and curve.n.tolist() == [2, 2, 2]
    np.testing.assert_allclose(curve.mean, [0.55, 0.75, 0.9])
    t_half = stats.t.ppf(0.975, 1) * math.sqrt(0.005) / math.sqrt(2)  # two seeds: t with one degree of freedom
    np.testing.assert_allclose(curve.half_width, [t_half] * 2 + [0], atol=1e-12)
    row = curve.rows()[0]
    assert row["ci_low"] == pytest.approx(0.55 - t_half) and row["ci_high"] == pytest.approx(0.55 + t_half)
    gaussian = learning_curve(KEY_A, groups[KEY_A], "val", interval="gaussian")
    np.testing.assert_allclose(gaussian.half_width, [0.098] * 2 + [0], atol=1e-4)


def test_compare_labels_to_reach_ratio_and_gain(hand_runs):
    groups = group_runs(read_runs([hand_runs]))
    c = compare(KEY_A, groups[KEY_A], KEY_B, groups[KEY_B], "val")
    assert c.target == pytest.approx(0.8) and c.baseline_labels == 30
    assert c.labels_to_reach == pytest.approx(20 + 0.05 / 0.15 * 10)  # 23.33 labels
    assert c.ratio == pytest.approx(30 / (20 + 0.05 / 0.15 * 10))  # 1.29x fewer labels
    assert c.compared_at == 30 and c.gain.test == "paired t"
    assert c.gain.mean == pytest.approx(0.1) and c.gain.statistic == pytest.approx(2.0)
    back = compare(KEY_B, groups[KEY_B], KEY_A, groups[KEY_A], "val")
    assert back.labels_to_reach is None and back.ratio is None  # random never reaches 0.9


def test_upsampling_ratio_by_hand(hand_runs):
    runs = group_runs(read_runs([hand_runs]))[KEY_A]
    ratios = {u.value: u for u in upsampling(KEY_A, runs, "place")}
    # seed 0 acquired 3 water of 5 (share 0.6, pool 0.2 → 3.0); seed 1: 1 of 5 (→ 1.0)
    assert ratios["water"].ratio.mean == pytest.approx(2.0)
    assert ratios["water"].ratio.half_width == pytest.approx(stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2))
    assert ratios["land"].ratio.mean == pytest.approx((0.4 / 0.8 + 0.8 / 0.8) / 2)
    assert ratios["water"].pool_share.mean == pytest.approx(0.2)
    combined = {u.value: u.ratio.mean for u in upsampling(KEY_A, runs, "label*place")}
    # a*water: seed 0 one of 5 (0.2 / 0.05 = 4), seed 1 none (0)
    assert combined["a*water"] == pytest.approx(2.0)
    assert combined["b*water"] == pytest.approx((2 / 5 / 0.15 + 1 / 5 / 0.15) / 2)
    assert acquisition_specs(runs) == ["label", "place", "label*place"]


def test_cumulative_upsampling_by_hand(hand_runs):
    runs = group_runs(read_runs([hand_runs]))[KEY_A][:1]
    water = next(c for c in cumulative_upsampling(KEY_A, runs, "place") if c.metric == "place=water")
    assert water.n_labeled.tolist() == [13, 22]  # labels once acquired: round 0 trained on 10, + 3; round 1: 20 + 2
    np.testing.assert_allclose(water.mean, [2 / 3 / 0.2, 3 / 5 / 0.2])


def test_group_metrics_are_named_spec_equals_value(tmp_path):
    groups = [{"land": {"n": 5, "accuracy": 0.8}, "water": {"n": 5, "accuracy": 0.4}}] * 2
    runs = read_runs([write_record(tmp_path, "random", 0, [0.6, 0.6], groups=groups)])
    assert curve_metrics(runs, "val") == ["accuracy", "worst_group", "place=land", "place=water"]
    curve = learning_curve(KEY_B, runs, "val", "place=water")
    assert curve.mean.tolist() == [0.4, 0.4]
    assert learning_curve(KEY_B, runs, "val", "worst_group").mean.tolist() == [0.4, 0.4]


def test_pool_counts_of_a_combination_come_from_the_cache_when_not_recorded(tmp_path):
    meta = Metadata.from_values(ids=[f"s{i}" for i in range(8)], labels=[0, 0, 0, 1, 1, 1, 0, 1],
                                splits=["train"] * 6 + ["val"] * 2, label_names=["a", "b"],
                                groups={"place": ["land", "land", "water", "water", "water", "land", "land", "land"]})
    cache = EmbeddingCache.write(tmp_path / "c.h5", np.zeros((8, 2), np.float32), meta, recipe=recipe())
    with EmbeddingCache(cache) as c:
        fingerprint = c.fingerprint
    path = write_record(tmp_path / "runs", "random", 0, [0.5, 0.5], [[("a", "land")]], fingerprint=fingerprint,
                        pool={"label": {"a": 3, "b": 3}}, source={"cache": str(cache)})
    run = read_runs([path])[0]
    assert pool_counts(run, "label*place") == {"a*land": 2, "a*water": 1, "b*land": 1, "b*water": 2}
    cache.unlink()
    with pytest.raises(ConfigError, match="records no pool counts for 'place'"):
        pool_counts(run, "place")


# ---------------------------------------------------------------------- bad input
def test_one_curve_from_two_fingerprints_is_refused_unless_allowed(tmp_path):
    write_record(tmp_path / "x", "random", 0, [0.5])
    write_record(tmp_path / "y", "random", 1, [0.6], fingerprint="e" * 64)
    runs = read_runs([tmp_path / "x", tmp_path / "y"])
    with pytest.raises(RecordError, match="2 different features.*`allow_mixed`"):
        group_runs(runs)
    assert len(group_runs(runs, allow_mixed=True)[KEY_B]) == 2
    write_record(tmp_path / "z", "random", 1, [0.6], fingerprint="e" * 64, backbone="other")
    assert len(group_runs(read_runs([tmp_path / "x", tmp_path / "z"]))) == 2  # other backbones: other curves


def test_the_same_run_twice_is_refused(tmp_path):
    write_record(tmp_path / "x", "random", 0, [0.5])
    write_record(tmp_path / "y", "random", 0, [0.5])
    with pytest.raises(RecordError, match="are the same run"):
        group_runs(read_runs([tmp_path / "x", tmp_path / "y"]), allow_mixed=True)


def test_unknown_group_names_the_recorded_columns(hand_runs):
    runs = read_runs([hand_runs])
    with pytest.raises(ConfigError, match=r"unknown group 'bird'.*\['label', 'place'\]"):
        upsampling(KEY_A, runs, "label*bird")


def test_empty_runs_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordError, match="no run records"):
        read_runs([tmp_path / "empty"])
