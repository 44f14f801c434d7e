"""Finetune mode on CPU with tiny random-init models: the paper's schedule and stop rules, gradient
accumulation, records, resume, DDP (gloo, 2 processes under torchrun) and the hybrid modes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import recipe as cache_recipe

from embedcache.backbones import create_backbone
from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.datasets import create_dataset
from embedcache.datasets.synthetic import write_image_manifest, write_text_jsonl
from embedcache.errors import CacheError, ConfigError
from embedcache.experiments import FinetuneExperiment, LinearExperiment, run_grid
from embedcache.learners.finetune import (BitRecipe, FinetuneLearner, FinetuneOptions, TextRecipe, bit_schedule,
                                          default_recipe)
from embedcache.protocols import get_protocol
from embedcache.records import read_run, read_runs, record_path

GN = "timm:test_efficientnet_gn"  # GroupNorm, like BiT: micro-batching does not change the numbers
SMALL = {"resize": "36", "crop": "32", "eval_resize": "32", "batch_size": "8"}
CLI_SMALL = [x for k, v in {**SMALL, "schedule": "1,2,3,4,5"}.items() for x in ("--recipe", f"{k}={v}")]
PROTOCOL = get_protocol("custom").replace(seed_size=4, per_round=2, budget=2, groups=("place",))
OPTIONS = FinetuneOptions(device="cpu", num_workers=0, micro_batch=4)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run faster on one thread


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_manifest(tmp_path_factory.mktemp("images") / "data", n=48, size=32)


def _learner(manifest, options=OPTIONS, num_classes=2, **recipe) -> FinetuneLearner:
    data = create_dataset("manifest", manifest)
    return FinetuneLearner(data, create_backbone(GN, weights="random"), num_classes,
                           default_recipe("image", {**SMALL, **recipe}), options)


def _stable(run) -> dict:
    return {"header": dataclasses.replace(run.header, created=None, versions={}),
            "rounds": [dataclasses.replace(r, seconds=0.0) for r in run.rounds]}


def test_bit_learning_rate_schedule_is_the_papers():
    recipe = BitRecipe()
    expected = {0: 3e-5, 50: 0.00153, 99: 0.003, 100: 0.003, 150: 0.003, 199: 0.003, 200: 0.003, 201: 3e-4,
                250: 3e-4, 300: 3e-4, 350: 3e-5, 400: 3e-5, 450: 3e-6, 499: 3e-6}
    for step, lr in expected.items():
        assert recipe.learning_rate(step, 40) == pytest.approx(lr, rel=1e-12), step
    assert recipe.learning_rate(500, 40) is None and recipe.step_budget(360) == 500
    assert bit_schedule(19_999) == (100, 200, 300, 400, 500)  # BiT-HyperRule for larger labelled sets
    assert bit_schedule(20_000) == (500, 3000, 6000, 9000, 10_000)
    assert bit_schedule(500_000) == (500, 6000, 12_000, 18_000, 20_000)
    assert recipe.learning_rate(9_999, 20_000) == pytest.approx(3e-6) and recipe.learning_rate(10_000, 20_000) is None


def test_recipes_hold_the_papers_values_and_parse_overrides():
    bit, text = BitRecipe(), TextRecipe()
    assert (bit.base_lr, bit.momentum, bit.weight_decay, bit.batch_size, bit.loss_ratio, bit.zero_head) == \
        (0.003, 0.9, 0.0, 32, 1e-3, True)
    assert (bit.resize, bit.crop, bit.eval_resize, bit.flip, bit.mean, bit.std) == \
        (512, 480, 480, True, (0.5,) * 3, (0.5,) * 3)
    assert bit.eval_preprocess().to_dict()["resize_mode"] == "square" and bit.eval_preprocess().crop == "none"
    sgd = bit.optimizer([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert (sgd["momentum"], sgd["weight_decay"], sgd["nesterov"]) == (0.9, 0.0, False)
    assert (text.lr, text.weight_decay, text.batch_size, text.loss_ratio, text.beta1, text.beta2) == \
        (1e-6, 0.1, 2, 1e-3, 0.9, 0.999)
    adamw = text.optimizer([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.999)
    assert text.learning_rate(7999, 5) == 1e-6 and text.learning_rate(8000, 5) is None
    changed = default_recipe("image", {"schedule": "1,2,3", "base_lr": "0.1", "flip": "false", "mean": "0,0,0"})
    assert (changed.schedule, changed.base_lr, changed.flip, changed.mean) == ((1, 2, 3), 0.1, False, (0.0, 0.0, 0.0))
    assert default_recipe("text", {"beta1": "0.99"}).beta1 == 0.99
    with pytest.raises(ConfigError, match="recipe_options: lr: the bit recipe has no such field; it has base_lr, momentum"):
        default_recipe("image", {"lr": "1"})
    with pytest.raises(ConfigError, match="recipe_options: crop=big: expected int"):
        default_recipe("image", {"crop": "big"})
    with pytest.raises(ConfigError, match="recipe_options: schedule=3,2: expected increasing"):
        default_recipe("image", {"schedule": "3,2"})


class _RecordedSGD(torch.optim.SGD):
    def step(self, closure=None):
        self.lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


@pytest.mark.slow
def test_training_follows_the_bit_schedule_and_stops_at_step_500(tmp_path):
    """The real BiT schedule (500 steps) on batches of 2 tiny images whose labels are noise."""
    class Recorded(BitRecipe):
        def optimizer(self, params):
            optimizer = _RecordedSGD(params, lr=self.base_lr, momentum=self.momentum)
            optimizer.lrs = self.lrs
            return optimizer

    manifest = write_image_manifest(tmp_path / "tiny", n=6, size=8)
    recipe = Recorded(batch_size=2, resize=8, crop=8, eval_resize=8)
    object.__setattr__(recipe, "lrs", [])
    learner = FinetuneLearner(create_dataset("manifest", manifest), create_backbone(GN, weights="random"), 2, recipe,
                              OPTIONS)
    rows = np.arange(6)
    learner.fit(rows, np.array([0, 1, 1, 0, 1, 0]))
    assert learner.training_["steps"] == 500 and learner.training_["stopped_by"] == "schedule"
    assert recipe.lrs == [BitRecipe().learning_rate(step, 6) for step in range(500)]


def test_loss_ratio_rule_stops_as_soon_as_the_loss_falls_below_a_thousandth(tmp_path):
    manifest = write_image_manifest(tmp_path / "separable", n=8, size=16)
    learner = _learner(manifest, resize="16", crop="16", eval_resize="16", flip="false", schedule="0,1000",
                       base_lr="0.01")
    learner.fit(np.arange(8), np.arange(8) % 2)
    losses, facts = learner.losses_, learner.training_
    assert facts["stopped_by"] == "loss_ratio" and facts["steps"] == len(losses) < 1000
    assert facts["loss_initial"] == pytest.approx(np.log(2)) == losses[0]  # zero head: uniform first prediction
    assert losses[-1] < 1e-3 * losses[0] <= min(losses[:-1])
    assert facts["loss_final"] == losses[-1]


def test_gradient_accumulation_gives_the_full_batch_update(images):
    """One step of batch 32: micro-batches of 8 (accumulated) vs one pass of 32 (GroupNorm backbone)."""
    rows = np.arange(32)
    y = create_dataset("manifest", images).metadata.label[rows]
    after = {}
    for micro in (8, 32):
        learner = _learner(images, FinetuneOptions(device="cpu", num_workers=0, micro_batch=micro), batch_size="32",
                           schedule="0,1", zero_head="false", base_lr="0.1")
        learner.fit(rows, y)
        after[micro] = {k: v.clone() for k, v in learner.network.state_dict().items()}
    start = _learner(images).network.body.state_dict()
    moved = max(float((after[8][f"body.{k}"] - v).abs().max()) for k, v in start.items() if v.is_floating_point())
    assert moved > 1e-3
    for key, value in after[32].items():
        assert torch.allclose(after[8][key], value, rtol=0, atol=1e-5), key


def test_every_fit_restarts_from_the_starting_weights(images):
    learner = _learner(images, schedule="1,2,3,4,5")
    y = learner.dataset.metadata.label
    first = learner.fit(np.arange(8), y[:8]).predict_proba(np.arange(24, 48))
    facts = dict(learner.training_)
    learner.fit(np.arange(8, 20), y[8:20])
    again = learner.fit(np.arange(8)[::-1], y[:8][::-1]).predict_proba(np.arange(24, 48))  # order does not matter
    np.testing.assert_array_equal(first, again)
    assert learner.training_ == facts and learner.warm_start is False


def test_training_crops_and_flips_the_resized_image_the_eval_transform_sees(images):
    learner = _learner(images, resize="32", crop="32", eval_resize="32")
    rows = np.arange(3)
    inputs = learner._train_inputs(rows)
    assert inputs[0].dtype == torch.uint8 and inputs[0].shape == (3, 32, 32)
    evaluated = torch.stack([learner._eval_transform(learner.dataset.load(r)) for r in rows])
    offsets = np.zeros((3, 2), dtype=np.int64)
    plain = learner._batch(inputs, np.arange(3), offsets, np.array([False] * 3))
    flipped = learner._batch(inputs, np.arange(3), offsets, np.array([True, False, True]))
    assert torch.allclose(plain, evaluated, atol=1e-6)
    assert torch.equal(flipped[0], plain[0].flip(-1)) and torch.equal(flipped[1], plain[1])
    cropped = _learner(images, resize="36", crop="32")
    image = cropped._train_inputs(rows[:1])[0]
    batch = cropped._batch([image], np.array([0]), np.array([[3, 1]]), np.array([False]))
    assert torch.allclose(batch[0], image[:, 3:35, 1:33].float() / 255 * 2 - 1)


def test_two_round_image_run_from_the_cli_writes_readable_records(images, tmp_path):
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, [
        "al", "--mode", "finetune", "--dataset", "manifest", "--root", str(images), "--backbone", GN,
        "--weights", "random", *CLI_SMALL, "--micro-batch", "4", "--workers", "0", "--device", "cpu",
        "--seed-size", "4", "--per-round", "2", "--budget", "2", "--group", "place",
        "--strategy", "least-confidence", "--strategy", "random", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "round   2/2" in result.output and "5 steps (schedule, loss 0.693" in result.output
    runs = read_runs([out])
    assert len(runs) == 2 and all(run.complete for run in runs)
    run = runs[0]
    learner = _learner(images, schedule="1,2,3,4,5")
    assert run.header.mode == "finetune" and run.header.learner == json.loads(json.dumps(learner.describe()))
    assert run.header.fingerprint == learner.starting_point().fingerprint
    assert run.header.backbone == f"{GN} (random init)"
    for r in run.rounds:
        assert r.training.steps == 5 and r.training.stopped_by == "schedule"
        assert r.training.loss_initial == pytest.approx(np.log(2))
        assert "place" in r.metrics["val"].groups
    assert len(run.rounds[0].acquired) == 2 and run.curve("val")[0].tolist() == [4, 6]


def test_two_round_text_run_writes_readable_records(tiny_bert, tmp_path):
    texts = write_text_jsonl(tmp_path / "texts.jsonl", n=24)
    experiment = FinetuneExperiment("jsonl", texts, f"hf:{tiny_bert}", recipe_options={"max_steps": "3", "lr": "1e-4"},
                                    options=OPTIONS)
    run, = run_grid(experiment, PROTOCOL.replace(groups=("topic",)), ["entropy"], [0], tmp_path / "runs")
    assert read_run(run.path).complete and len(run.rounds) == 2
    assert run.header.learner["recipe"]["name"] == "text" and run.header.learner["recipe"]["max_steps"] == 3
    for r in run.rounds:
        assert r.training.steps == 3 and r.training.stopped_by == "max_steps"
        assert r.training.loss_final != r.training.loss_initial
    assert run.rounds[0].acquired.ids and "topic" in run.rounds[0].metrics["val"].groups


def test_a_run_killed_mid_round_resumes_to_the_same_record(images, tmp_path):
    protocol = PROTOCOL.replace(budget=4)  # three rounds

    def experiment(progress=None):
        return FinetuneExperiment("manifest", images, GN, weights="random",
                                  recipe_options={**SMALL, "schedule": "1,2,3,4,6"}, options=OPTIONS,
                                  progress=progress)

    whole, = run_grid(experiment(), protocol, ["margin"], [3], tmp_path / "whole")
    fits = []

    def kill_in_round_1(phase, done, total):
        fits.append(phase == "train" and done == 1)
        if sum(fits) == 2 and done == 3:
            raise KeyboardInterrupt  # a kill at step 3 of the second fit

    with pytest.raises(KeyboardInterrupt):
        run_grid(experiment(kill_in_round_1), protocol, ["margin"], [3], tmp_path / "killed")
    assert len(read_run(record_path(tmp_path / "killed", "margin", 3)).rounds) == 1
    resumed, = run_grid(experiment(), protocol, ["margin"], [3], tmp_path / "killed")
    assert _stable(resumed) == _stable(whole)
    assert [r.acquired.ids for r in resumed.rounds] == [r.acquired.ids for r in whole.rounds]


@pytest.mark.slow
def test_ddp_on_cpu_with_torchrun_matches_one_process(images, tmp_path):
    """2 processes (gloo) share each batch and the scoring. Equal to one process up to float
    summation order: losses and scores agree to 1e-5, acquisitions and metrics exactly."""
    args = ["al", "--mode", "finetune", "--dataset", "manifest", "--root", str(images), "--backbone", GN,
            "--weights", "random", *CLI_SMALL, "--micro-batch", "2", "--workers", "0", "--device", "cpu",
            "--seed-size", "4", "--per-round", "2", "--budget", "4", "--strategy", "least-confidence", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "embedcache.cli", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "embedcache.cli", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("runs complete") == 1  # only rank 0 reports
    a, b = (read_run(record_path(tmp_path / d, "least-confidence", 0)) for d in ("one", "two"))
    assert a.header.learner == b.header.learner and a.header.fingerprint == b.header.fingerprint
    assert len(a.rounds) == len(b.rounds) == 3
    for x, y in zip(a.rounds, b.rounds):
        assert x.acquired.ids == y.acquired.ids and x.metrics == y.metrics
        np.testing.assert_allclose(x.acquired.scores, y.acquired.scores, atol=1e-5)
        for key in ("loss_initial", "loss_final"):
            assert getattr(x.training, key) == pytest.approx(getattr(y.training, key), abs=1e-5)
        assert x.training.steps == y.training.steps


@pytest.fixture
def image_cache(images, tmp_path):
    out = tmp_path / "cache.h5"
    result = CliRunner().invoke(main, ["extract", "--dataset", "manifest", "--root", str(images), "--backbone", GN,
                                       "--weights", "random", "--resolution", "32", "--out", str(out), "--workers",
                                       "0", "--device", "cpu", "--dtype", "float32", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_hybrids_rank_with_one_mode_and_evaluate_with_the_other(images, image_cache, tmp_path):
    recipe = {**SMALL, "schedule": "1,2,3,4,5"}

    def run(name, **roles):
        experiment = FinetuneExperiment("manifest", images, GN, weights="random", recipe_options=recipe,
                                        options=OPTIONS, cache=image_cache, **roles)
        return run_grid(experiment, PROTOCOL, ["least-confidence"], [0], tmp_path / name)[0].rounds[0]

    finetune = run("finetune")
    linear = run_grid(LinearExperiment(image_cache), PROTOCOL, ["least-confidence"], [0], tmp_path / "linear")[0]
    linear_round = linear.rounds[0]
    score_linear = run("score-linear", score_with="linear")
    score_finetune = run("score-finetune", evaluate_with="linear")
    assert score_linear.metrics == finetune.metrics
    assert score_linear.acquired.ids == linear_round.acquired.ids
    assert score_finetune.metrics == linear_round.metrics
    assert score_finetune.acquired.ids == finetune.acquired.ids
    assert score_linear.training.steps == 5 and score_linear.training.scorer.stopped_by == "converged"
    header = read_run(record_path(tmp_path / "score-linear", "least-confidence", 0)).header
    assert header.mode == "hybrid" and header.learner["score_with"]["learner"] == "linear"
    assert header.learner["linear_features"] == EmbeddingCache(image_cache).fingerprint


def test_hybrid_refuses_a_cache_of_other_examples(images, tmp_path):
    data = create_dataset("manifest", images)
    meta = data.metadata
    other = tmp_path / "other.h5"
    renamed = type(meta)(np.array([f"x{i}" for i in range(len(meta))], dtype=object), meta.label, meta.split,
                         meta.split_names, meta.groups, meta.group_names, meta.label_names)
    EmbeddingCache.write(other, np.zeros((len(meta), 4), np.float32), renamed, recipe=cache_recipe())
    experiment = FinetuneExperiment("manifest", images, GN, weights="random", recipe_options=SMALL, options=OPTIONS,
                                    cache=other, score_with="linear")
    with pytest.raises(CacheError, match=r"48 of the dataset's 48 ids are not in the cache, e.g. 'ex00000'"):
        experiment.open()
    relabelled = type(meta)(meta.ids, 1 - meta.label, meta.split, meta.split_names, meta.groups, meta.group_names,
                            meta.label_names)
    EmbeddingCache.write(tmp_path / "relabelled.h5", np.zeros((len(meta), 4), np.float32), relabelled,
                         recipe=cache_recipe())
    with pytest.raises(CacheError, match="id 'ex00000' has label 1 in the cache but 0 in the dataset"):
        FinetuneExperiment("manifest", images, GN, weights="random", recipe_options=SMALL, options=OPTIONS,
                           cache=tmp_path / "relabelled.h5", evaluate_with="linear").open()


@pytest.mark.parametrize("extra, message", [
    (["--mode", "finetune"], "needs --dataset, --root and --backbone"),
    (["--mode", "finetune", "--score-with", "linear", "@data"], "--cache: a linear side"),
    (["--mode", "finetune", "@data", "--recipe", "lr=1"], "the bit recipe has no such field"),
    (["--mode", "finetune", "@data", "--device", "cuda:0"], "CUDA is not available"),
    (["--mode", "finetune", "--dataset", "jsonl", "--root", "@texts", "--backbone", GN, "--weights", "random"],
     "holds text examples but timm:test_efficientnet_gn reads image"),
])
def test_cli_errors_name_the_option(images, tmp_path, extra, message):
    data = ["--dataset", "manifest", "--root", str(images), "--backbone", GN, "--weights", "random"]
    texts = str(write_text_jsonl(tmp_path / "t.jsonl", n=8))
    args = [x for e in extra for x in (data if e == "@data" else [texts if e == "@texts" else e])]
    result = CliRunner().invoke(main, ["al", "--strategy", "random", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output, result.output  # usage errors, as click's own
