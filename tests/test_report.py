"""`embedcache report`, `separability` and `tsne` on synthetic caches where AL helps a
"pretrained-like" feature space and not a "random-like" one; probes checked by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import recipe
from PIL import Image

from embedcache.analysis.report import ReportConfig, write_report
from embedcache.analysis.separability import ProbeConfig, probe_rows, separability
from embedcache.analysis.tsne import TSNEConfig, map_rows, sample_rows
from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.datasets.synthetic import ambiguity_embeddings
from embedcache.errors import ConfigError
from embedcache.experiments import LinearExperiment, run_grid
from embedcache.metadata import Metadata
from embedcache.protocols import get_protocol
from embedcache.records import read_runs

SMALL = get_protocol("waterbirds").replace(seed_size=20, per_round=5, budget=60)
MISMATCHED = ("landbird*water", "waterbird*land")


def _cache(path, separable, spec):
    x, meta = ambiguity_embeddings(n_train=1500, n_val=600, dim=24, seed=1, separable=separable)
    weights = {"source": "pretrained" if separable else "random", "seed": 0}
    return EmbeddingCache.write(path, x, meta, recipe=recipe(spec=spec, weights=weights))


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("caches")
    return _cache(folder / "pre.h5", True, "synthetic:pre"), _cache(folder / "rnd.h5", False, "synthetic:rnd")


@pytest.fixture(scope="module")
def runs(caches, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    for cache, name in zip(caches, ("pre", "rnd")):
        run_grid(LinearExperiment(cache), SMALL, ["least-confidence", "random"], [0, 1, 2], folder / name)
    return folder / "pre", folder / "rnd"


def _is_png(path):
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"


def test_report_shows_least_confidence_upsampling_the_mismatched_groups(runs, tmp_path):
    summary = write_report(read_runs(runs), tmp_path / "report")
    assert [(c["backbone"], c["strategy"]) for c in summary["curves"]] == [
        ("synthetic:pre (pretrained)", "least-confidence"), ("synthetic:pre (pretrained)", "random"),
        ("synthetic:rnd (random init)", "least-confidence"), ("synthetic:rnd (random init)", "random")]
    ratio = {(u["backbone"][:13], u["strategy"], u["group"], u["value"]): u["ratio"]["mean"]
             for u in summary["upsampling"]}
    for value in MISMATCHED:
        assert ratio[("synthetic:pre", "least-confidence", "label*place", value)] > 3, value
        assert ratio[("synthetic:pre", "random", "label*place", value)] < 2, value
    top = [(u["backbone"][:13], u["value"]) for u in summary["top_upsampled"]][:2]
    assert sorted(top) == [("synthetic:pre", v) for v in MISMATCHED]
    pre = summary["comparisons"][0]
    assert pre["strategy"] == "least-confidence" and pre["baseline"] == "random"
    assert pre["ratio"] > 1 and pre["gain"]["mean"] > 0 and pre["gain"]["test"] == "paired t"
    final = summary["curves"][0]["final"]
    assert final["accuracy"]["n"] == 3 and final["accuracy"]["n_labeled"] == 80
    for figure in summary["figures"]:
        _is_png(tmp_path / "report" / figure["file"])
    names = {f["file"] for f in summary["figures"]}
    assert {"curves-overall.png", "curves-label-x-place.png", "upsampling-label-x-place.png",
            "upsampling-rounds-label-x-place.png"} <= names
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "| synthetic:pre (pretrained) | least-confidence | 3 | 80 |" in text
    assert "(curves-overall.png)" in text and "waterbird*land" in text
    with open(tmp_path / "report" / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["metric"] for r in rows} >= {"accuracy", "worst_group", "label*place=waterbird*land"}


def test_report_twice_gives_the_same_summary_json(runs, tmp_path):
    runner = CliRunner()
    first = runner.invoke(main, ["report", "--runs", str(runs[0]), "--runs", str(runs[1]), "--out",
                                 str(tmp_path / "r"), "--quiet"])
    assert first.exit_code == 0, first.output
    before = (tmp_path / "r" / "summary.json").read_bytes()
    # the same runs in another order, into the same folder: an earlier report, replaced only with --overwrite
    args = ["report", "--runs", str(runs[1]), "--runs", str(runs[0]), "--out", str(tmp_path / "r"), "--quiet"]
    refused = runner.invoke(main, args)
    assert refused.exit_code == 2 and "holds an earlier `report` output; pass --overwrite" in refused.output
    again = runner.invoke(main, [*args, "--overwrite"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "r" / "summary.json").read_bytes() == before
    data = json.loads(before)
    assert all(not r["record"].startswith("/") for r in data["runs"])


def test_report_options(runs, tmp_path):
    config = ReportConfig(baseline="least-confidence", metric="worst_group", groups=("place",))
    summary = write_report(read_runs([runs[0]]), tmp_path / "r", config)
    assert [c["strategy"] for c in summary["comparisons"]] == ["random"]
    assert summary["comparisons"][0]["metric"] == "worst_group"
    assert {u["group"] for u in summary["upsampling"]} == {"place"}
    few = write_report(read_runs([runs[0]]), tmp_path / "few", ReportConfig(groups=("label*place",), max_panels=3))
    assert "curves-label-x-place.png shows 3 of 4 values of label*place; curves.csv has all" in few["notes"]
    assert "figures of label*place show the 3 values acquired most; the tables have all" in few["notes"]
    assert len({u["value"] for u in few["upsampling"]}) == 4
    with open(tmp_path / "few" / "upsampling-rounds.csv") as f:
        assert len({row["value"] for row in csv.DictReader(f)}) == 3


def test_report_says_which_interval_it_used(runs, tmp_path):
    student = CliRunner().invoke(main, ["report", "--runs", str(runs[0]), "--out", str(tmp_path / "t"), "--quiet"])
    paper = CliRunner().invoke(main, ["report", "--runs", str(runs[0]), "--out", str(tmp_path / "g"), "--ci",
                                      "gaussian", "--quiet"])
    assert student.exit_code == 0 and paper.exit_code == 0, student.output + paper.output
    t, g = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("t", "g"))
    assert (t["interval"], g["interval"]) == ("t", "gaussian")
    assert "Student t interval" in (tmp_path / "t" / "summary.md").read_text()
    assert "Gaussian approximation, as the paper" in (tmp_path / "g" / "summary.md").read_text()
    widths = [(a["ratio"]["ci_high"] - a["ratio"]["ci_low"], b["ratio"]["ci_high"] - b["ratio"]["ci_low"])
              for a, b in zip(t["upsampling"], g["upsampling"]) if a["ratio"]["ci_low"] is not None]
    assert widths and all(wide >= narrow for wide, narrow in widths) and any(w > n for w, n in widths)


@pytest.mark.parametrize("args, message", [
    (["--group", "label*bird"], "unknown group 'bird'"),
    (["--baseline", "entropy"], "--baseline: 'entropy': no runs of that strategy"),
    (["--split", "test"], "--split: 'test'"),
    (["--metric", "f1"], "--metric: 'f1' is not recorded"),
])
def test_report_bad_options_are_one_line_errors(runs, tmp_path, args, message):
    result = CliRunner().invoke(main, ["report", "--runs", str(runs[0]), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2 and result.output.startswith("Error: ") and message in result.output, result.output
    assert result.output.count("\n") == 1
    assert not (tmp_path / "r").exists()  # nothing written before the input is checked


def test_report_refuses_mixed_features_empty_folders_and_foreign_out_folders(runs, caches, tmp_path):
    runner = CliRunner()
    # the same label on other features: a cache with the pretrained spec but another recipe
    x, meta = ambiguity_embeddings(n_train=1500, n_val=600, dim=24, seed=2)
    other = EmbeddingCache.write(tmp_path / "other.h5", x, meta,
                                 recipe=recipe(spec="synthetic:pre", weights={"source": "pretrained", "seed": 1}))
    run_grid(LinearExperiment(other), SMALL.replace(budget=10), ["random"], [7], tmp_path / "other")
    both = ["--runs", str(runs[0]), "--runs", str(tmp_path / "other")]
    mixed = runner.invoke(main, ["report", *both, "--out", str(tmp_path / "m")])
    assert mixed.exit_code == 1 and "different features" in mixed.output and "pass --allow-mixed" in mixed.output
    allowed = runner.invoke(main, ["report", *both, "--out", str(tmp_path / "m"), "--allow-mixed", "--quiet"])
    assert allowed.exit_code == 0, allowed.output
    curve = next(c for c in json.loads((tmp_path / "m" / "summary.json").read_text())["curves"]
                 if c["strategy"] == "random")
    assert curve["seeds"] == [0, 1, 2, 7] and len(curve["fingerprints"]) == 2
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(main, ["report", "--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "e")])
    assert empty.exit_code == 1 and "no run records" in empty.output
    before = {p.name: p.read_bytes() for p in runs[1].iterdir()}
    for overwrite in ([], ["--overwrite"]):  # a runs folder is never a report's, --overwrite or not
        foreign = runner.invoke(main, ["report", "--runs", str(runs[0]), "--out", str(runs[1]), *overwrite])
        assert foreign.exit_code == 2 and ("holds files this command did not write (e.g. least-confidence-seed0.jsonl)"
                                           in foreign.output), foreign.output
    assert {p.name: p.read_bytes() for p in runs[1].iterdir()} == before
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "summary.md").write_text("my own summary")
    refused = runner.invoke(main, ["report", "--runs", str(runs[0]), "--out", str(mine), "--overwrite"])
    assert refused.exit_code == 2 and (mine / "summary.md").read_text() == "my own summary"


# ---------------------------------------------------------------------- separability
def test_probe_accuracy_per_class_by_hand(tmp_path):
    """1-D features: class a at -1, b at +1 in train; in val one a sits at +1, so a scores 3/4, b 4/4."""
    x = np.array([-1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, 1, 1, 1, 1, 1], dtype=np.float32)[:, None]
    meta = Metadata.from_values(ids=[f"p{i}" for i in range(16)], labels=[0] * 4 + [1] * 4 + [0] * 4 + [1] * 4,
                                splits=["train"] * 8 + ["val"] * 8, label_names=["a", "b"],
                                groups={"place": ["land", "water"] * 8})
    cache = EmbeddingCache.write(tmp_path / "tiny.h5", x, meta, recipe=recipe())
    label, place, both = separability([cache], "label", ["place"])
    assert label.classes == ("a", "b") and label.n_train.tolist() == [4, 4] and label.n_test.tolist() == [4, 4]
    assert label.class_accuracy.tolist() == [0.75, 1.0] and label.accuracy == 7 / 8 and label.chance == 0.5
    assert place.target == "place" and both.target == "label*place"
    assert both.classes == ("a*land", "a*water", "b*land", "b*water") and both.n_train.tolist() == [2, 2, 2, 2]
    with pytest.raises(ConfigError, match="tiny.h5: unknown group 'bird'"):
        separability([cache], "label", ["bird"])


def test_probe_rows_rebalance_and_halve_one_split():
    meta = Metadata.from_values(ids=[f"q{i}" for i in range(40)], labels=[0] * 30 + [1] * 10,
                                splits=["train"] * 40, label_names=["a", "b"])
    train, test = probe_rows(meta, "label", ProbeConfig(train_split="train", test_split="train"))
    assert not np.intersect1d(train, test).size
    assert np.bincount(meta.label[train]).tolist() == [5, 5] and np.bincount(meta.label[test]).tolist() == [5, 5]
    again = probe_rows(meta, "label", ProbeConfig(train_split="train", test_split="train"))
    assert np.array_equal(again[0], train)  # seeded
    unbalanced, _ = probe_rows(meta, "label", ProbeConfig(train_split="train", test_split="train", balance=False))
    assert np.bincount(meta.label[unbalanced]).tolist() == [15, 5]


def test_separability_pretrained_like_high_random_like_near_chance(caches, tmp_path):
    result = CliRunner().invoke(main, ["separability", str(caches[0]), str(caches[1]), "--target", "label",
                                       "--group", "place", "--out", str(tmp_path / "sep"), "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "sep" / "separability.json").read_text())
    acc = {(p["backbone"][:13], p["target"]): p for p in data["probes"]}
    for target, chance in (("place", 0.5), ("label*place", 0.25)):
        assert acc[("synthetic:pre", target)]["accuracy"] > 0.85
        assert acc[("synthetic:rnd", target)]["accuracy"] < chance + 0.12
        assert acc[("synthetic:rnd", target)]["chance"] == chance
    assert min(c["accuracy"] for c in acc[("synthetic:pre", "label*place")]["classes"].values()) > 0.85
    _is_png(tmp_path / "sep" / "separability.png")
    with open(tmp_path / "sep" / "separability.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * (3 + 3 + 5)  # per class plus "(all)", per cache


# ---------------------------------------------------------------------- t-SNE
def test_subsample_keeps_the_starred_rows():
    rows = sample_rows(np.arange(100, 1000), np.array([999, 100, 5]), max_points=50, seed=0)
    assert len(rows) == 50 and {100, 999} <= set(rows.tolist()) and 5 not in rows
    assert np.array_equal(rows, sample_rows(np.arange(100, 1000), np.array([999, 100]), 50, 0))
    meta = Metadata.from_values(ids=[f"t{i}" for i in range(30)], labels=[0] * 30, splits=["train", "val"] * 15)
    with pytest.raises(ConfigError, match="'t1' is not in split 'train'"):
        map_rows(meta, ["t1"], "train", TSNEConfig(max_points=10))


def test_tsne_draws_the_first_acquisitions_as_stars(caches, runs, tmp_path):
    out = tmp_path / "maps" / "tsne.png"
    args = ["tsne", str(caches[0]), "--runs", str(runs[0]), "--strategy", "least-confidence", "--color", "label",
            "--style", "place", "--max-points", "300", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    _is_png(out)
    with open(out.with_suffix(".csv")) as f:
        points = list(csv.DictReader(f))
    first = [i for _, i, _ in read_runs([runs[0] / "least-confidence-seed0.jsonl"])[0].acquired()[:10]]
    assert len(points) == 300 and sorted(p["id"] for p in points if p["starred"] == "1") == sorted(first)
    assert {p["place"] for p in points} == {"land", "water"}
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.output
    assert CliRunner().invoke(main, [*args, "--overwrite", "--seed", "1"]).exit_code == 0
    with open(out.with_suffix(".csv")) as f:
        assert list(csv.DictReader(f)) != points  # replaced, both files
    several = CliRunner().invoke(main, [*args[:4], "--out", str(tmp_path / "x.png")])
    assert several.exit_code == 2 and "choose one with --strategy" in several.output
    other = CliRunner().invoke(main, ["tsne", str(caches[1]), "--runs", str(runs[0]), "--out", str(tmp_path / "y.png")])
    assert other.exit_code == 1 and "was made on this cache" in other.output
    style = CliRunner().invoke(main, ["tsne", str(caches[0]), "--style", "bird", "--out", str(tmp_path / "z.png")])
    assert style.exit_code == 2 and "unknown group 'bird'" in style.output
    assert sorted(p.name for p in tmp_path.glob("*.png")) == []  # nothing written by the refused ones


def test_report_stays_readable_with_twelve_strategies(tmp_path):
    from embedcache.analysis.curves import CurveKey
    from embedcache.analysis.plots import key_styles

    twelve = ["random", "least-confidence", "entropy", "margin", "max-logit", "power-entropy", "softmax-margin",
              "rank-least-confidence", "coreset", "badge", "cluster-margin", "probcover:delta=4.0"]
    x, meta = ambiguity_embeddings(n_train=300, n_val=100, dim=8, seed=3)
    tiny_cache = EmbeddingCache.write(tmp_path / "tiny.h5", x, meta, recipe=recipe())
    protocol = get_protocol("waterbirds").replace(seed_size=10, per_round=5, budget=10)
    run_grid(LinearExperiment(tiny_cache), protocol, twelve, [0, 1], tmp_path / "runs")
    result = CliRunner().invoke(main, ["report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "report"),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    summary = (tmp_path / "report" / "summary.md").read_text()
    for name in twelve:
        assert f"| {name} |" in summary, name
    pngs = sorted((tmp_path / "report").rglob("*.png"))
    assert pngs and all(_is_png(p) is None for p in pngs)
    styles = key_styles([CurveKey(backbone="b", strategy=name) for name in twelve])
    assert len({s["color"] for s in styles.values()}) == 12  # one colour each, none repeated
    many = key_styles([CurveKey(backbone="b", strategy=f"s{i:02d}") for i in range(14)])
    assert len({(s["color"], s.get("marker")) for s in many.values()}) == 14  # past 12 colours, markers differ
