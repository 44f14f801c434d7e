"""The paper's Appendix D: the validation-plateau stop beside the loss-ratio and step-budget stops,
the `appendix-d` preset, each round's training + acquisition wall time, and the report's table of
stop rules, end to end on tiny random-init models on CPU."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import embedcache.loop
from embedcache.backbones import create_backbone
from embedcache.cli import main
from embedcache.datasets import create_dataset
from embedcache.datasets.synthetic import ambiguity_embeddings, write_image_manifest
from embedcache.errors import ConfigError
from embedcache.learners.finetune import BitRecipe, FinetuneLearner, FinetuneOptions, TextRecipe, default_recipe
from embedcache.learners.linear import LinearLearner
from embedcache.loop import run_al
from embedcache.protocols import get_protocol
from embedcache.records import Source, read_runs

GN = "timm:test_efficientnet_gn"
SMALL = {"resize": "36", "crop": "32", "eval_resize": "32", "batch_size": "8"}
OPTIONS = FinetuneOptions(device="cpu", num_workers=0, micro_batch=4)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run faster on one thread


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_manifest(tmp_path_factory.mktemp("images") / "data", n=32, size=32)


def _learner(manifest, **recipe_options) -> FinetuneLearner:
    return FinetuneLearner(create_dataset("manifest", manifest), create_backbone(GN, weights="random"), 2,
                           default_recipe("image", {**SMALL, **recipe_options}), OPTIONS)


def test_appendix_d_preset_holds_the_papers_sizes():
    protocol = get_protocol("appendix-d")
    waterbirds = get_protocol("waterbirds")
    assert (protocol.seed_size, protocol.per_round, protocol.budget, protocol.pool_size) == (32, 1, 64, None)
    assert protocol.n_rounds == 65 and protocol.schedule() == [1] * 64
    assert (protocol.seed_balanced, protocol.eval_splits, protocol.evaluation) == \
        (waterbirds.seed_balanced, waterbirds.eval_splits, waterbirds.evaluation)


def test_stop_fields_default_to_the_papers_rule_and_are_recorded_only_when_they_matter():
    for recipe_class in (BitRecipe, TextRecipe):
        plain = recipe_class()
        assert (plain.stop, plain.plateau_split, plain.plateau_patience, plain.plateau_every) == \
            ("loss_ratio", "val", 5, 10)
        assert not {"stop", "plateau_split", "plateau_patience", "plateau_every"} & set(plain.to_dict())
    plateau = default_recipe("image", {"stop": "val_plateau", "plateau_every": "3"}).to_dict()
    assert {k: plateau[k] for k in ("stop", "plateau_split", "plateau_patience", "plateau_every")} == \
        {"stop": "val_plateau", "plateau_split": "val", "plateau_patience": 5, "plateau_every": 3}
    budget_only = default_recipe("image", {"stop": "none"}).to_dict()
    assert budget_only["stop"] == "none" and "plateau_split" not in budget_only
    with pytest.raises(ConfigError, match="recipe_options: stop=early: choose one of loss_ratio, val_plateau, none"):
        default_recipe("image", {"stop": "early"})
    with pytest.raises(ConfigError, match=r"plateau_patience \(0\) and plateau_every \(10\) must be at least 1"):
        default_recipe("text", {"plateau_patience": "0"})


def test_val_plateau_stops_the_fifth_time_the_watched_accuracy_does_not_increase(images, monkeypatch):
    learner = _learner(images, schedule="0,1000", stop="val_plateau", plateau_every="2")
    watched = learner.dataset.metadata.split_indices("val")
    # against the check before: non-increases at checks 3, 5, 7, 9, 10 (against the best so far it would be 9)
    right_counts = iter([8, 11, 9, 10, 10, 12, 12, 14, 14, 13])  # of the 16 watched examples
    calls = []

    def score(rows, outputs, phase="predict"):
        calls.append((rows.tolist(), phase))
        labels = learner._watched[1]
        right = np.arange(len(labels)) < next(right_counts)
        return [np.eye(2, dtype=np.float32)[np.where(right, labels, 1 - labels)]]

    monkeypatch.setattr(learner, "_score", score)
    rows = learner.dataset.metadata.split_indices("train")[:8]
    learner.fit(rows, learner.dataset.metadata.label[rows])
    facts = learner.training_
    assert facts["stopped_by"] == "val_plateau" and facts["plateau_checks"] == 10 and facts["steps"] == 20
    assert len(watched) == 16 and facts["plateau_accuracy"] == 13 / 16
    assert calls == [(watched.tolist(), "validate")] * 10 and learner.network.training


def test_val_plateau_leaves_the_loss_ratio_rule_off_and_the_step_budget_on(images):
    rows = np.arange(8)
    y = create_dataset("manifest", images).metadata.label[rows]
    fast = dict(resize="16", crop="16", eval_resize="16", flip="false", base_lr="0.01")
    by_loss = _learner(images, schedule="0,40", **fast)
    by_loss.fit(rows, y)
    assert by_loss.training_["stopped_by"] == "loss_ratio" and by_loss.training_["steps"] < 40
    budget = _learner(images, schedule="0,40", stop="none", **fast)
    budget.fit(rows, y)
    assert budget.training_["stopped_by"] == "schedule" and budget.training_["steps"] == 40
    patient = _learner(images, schedule="0,12", stop="val_plateau", plateau_every="4", plateau_patience="5", **fast)
    patient.fit(rows, y)
    facts = patient.training_
    assert facts["stopped_by"] == "schedule" and facts["steps"] == 12 and facts["plateau_checks"] == 3


def test_a_plateau_split_the_data_lacks_is_refused_by_name(images):
    with pytest.raises(ConfigError, match="recipe_options: plateau_split=test: dataset 'manifest' has no such split; "
                                          "it has train, val"):
        _learner(images, stop="val_plateau", plateau_split="test")
    _learner(images, plateau_split="test")  # not watched: the loss-ratio rule needs no split


def test_seconds_are_training_and_acquisition_without_the_evaluation(monkeypatch, tmp_path):
    """A fake clock: fitting takes 1 s, choosing a batch 10 s, evaluating a split 100 s."""
    clock = [0.0]
    monkeypatch.setattr(embedcache.loop.time, "perf_counter", lambda: clock[0])
    evaluate, fit, create = embedcache.loop.evaluate, LinearLearner.fit, embedcache.loop.create_strategy

    def slow(function, seconds):
        def call(*args, **kwargs):
            clock[0] += seconds
            return function(*args, **kwargs)
        return call

    class SlowStrategy:
        def __init__(self, strategy):
            self.strategy = strategy
            self.select = slow(strategy.select, 10)

        def __getattr__(self, name):
            return getattr(self.strategy, name)

    monkeypatch.setattr(embedcache.loop, "evaluate", slow(evaluate, 100))
    monkeypatch.setattr(LinearLearner, "fit", slow(fit, 1))
    monkeypatch.setattr(embedcache.loop, "create_strategy", lambda name: SlowStrategy(create(name)))
    x, meta = ambiguity_embeddings(n_train=200, n_val=50, dim=8, seed=1)
    protocol = get_protocol("waterbirds").replace(seed_size=10, per_round=5, budget=10, eval_splits=("val",))
    run = run_al(LinearLearner(x, 2), meta, protocol, "margin", 0, tmp_path, source=Source("synthetic"))
    assert [r.seconds for r in run.rounds] == [11.0, 11.0, 1.0]  # the last round acquires nothing


def _al(images, out, *extra):
    return CliRunner().invoke(main, [
        "al", "--mode", "finetune", "--dataset", "manifest", "--root", str(images), "--backbone", GN,
        "--weights", "random", *[x for k, v in SMALL.items() for x in ("--recipe", f"{k}={v}")],
        "--recipe", "schedule=1,4", "--micro-batch", "4", "--workers", "0", "--device", "cpu",
        "--protocol", "appendix-d", "--seed-size", "4", "--budget", "2", "--group", "place",
        "--strategy", "least-confidence", "--strategy", "random", "--seeds", "0-1", "--quiet", "--out", str(out),
        *extra])


def test_both_stop_rules_end_to_end_and_a_report_that_compares_them(images, tmp_path):
    plateau = _al(images, tmp_path / "plateau", "--recipe", "stop=val_plateau", "--recipe", "plateau_every=1",
                  "--recipe", "plateau_patience=1")
    loss = _al(images, tmp_path / "loss")
    assert plateau.exit_code == 0 and loss.exit_code == 0, plateau.output + loss.output
    runs = read_runs([tmp_path / "plateau", tmp_path / "loss"])
    assert len(runs) == 8 and all(r.complete and len(r.rounds) == 3 for r in runs)
    for run in runs:
        recipe_ = run.header.learner["recipe"]
        watched = run.path.parent.name == "plateau"
        assert recipe_.get("stop") == ("val_plateau" if watched else None)
        assert run.header.protocol["per_round"] == 1 and run.header.protocol["name"] == "appendix-d"
        for r in run.rounds:
            assert r.seconds > 0 and r.training.stopped_by in (("val_plateau", "schedule") if watched else
                                                               ("loss_ratio", "schedule"))
            assert ("plateau_checks" in r.training.extra) == watched
    result = CliRunner().invoke(main, ["report", "--runs", str(tmp_path / "plateau"), "--runs", str(tmp_path / "loss"),
                                       "--out", str(tmp_path / "report"), "--group", "place", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert sorted((c["strategy"], c["variant"]) for c in summary["curves"]) == [
        ("least-confidence", "stop=loss_ratio"), ("least-confidence", "stop=val_plateau"),
        ("random", "stop=loss_ratio"), ("random", "stop=val_plateau")]
    rules = summary["stop_rules"]
    by_rule = {(r["strategy"], r["stop"]): r for r in rules["rules"]}
    for (strategy, stop), rule in by_rule.items():
        members = [r for r in runs if r.strategy == strategy and (r.path.parent.name == "plateau") ==
                   (stop == "val_plateau")]
        steps = [sum(x.training.steps for x in r.rounds) for r in members]
        assert rule["seeds"] == 2 and rule["steps"]["mean"] == pytest.approx(np.mean(steps))
        assert rule["seconds"]["mean"] == pytest.approx(np.mean([sum(x.seconds for x in r.rounds) for r in members]),
                                                         rel=1e-5)
        finals = [r.rounds[-1].metrics["val"].accuracy for r in members]
        assert rule["accuracy"]["mean"] == pytest.approx(np.mean(finals))
    differences = {d["strategy"]: d for d in rules["differences"]}
    assert set(differences) == {"least-confidence", "random"}
    for strategy, d in differences.items():
        assert (d["stop"], d["against"]) == ("val_plateau", "loss_ratio")
        assert d["accuracy"]["n_a"] == 2 and d["accuracy"]["test"] == "paired t"
        plateau_steps = by_rule[(strategy, "val_plateau")]["steps"]["mean"]
        loss_steps = by_rule[(strategy, "loss_ratio")]["steps"]["mean"]
        assert d["steps"]["mean"] == pytest.approx(plateau_steps - loss_steps)
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "## Stop rules" in text and "| least-confidence | val_plateau − loss_ratio | 2 |" in text
    with open(tmp_path / "report" / "stop-rule-differences.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["strategy"], r["quantity"]) for r in rows} == {(s, q) for s in differences
                                                             for q in ("accuracy", "seconds", "steps")}
    assert all(r["test"] == "paired t" for r in rows)
