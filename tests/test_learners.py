"""Learners: one conformance test every learner passes, and the linear head's agreement with
scikit-learn's LogisticRegression (probabilities within 1e-3)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from embedcache.errors import ConfigError
from embedcache.learners.linear import LinearConfig, LinearLearner


def _data(classes: int, n: int = 600, dim: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, dim)) * rng.uniform(0.5, 3, dim) + rng.normal(size=dim) * 2
    x[:, :classes] += np.eye(classes)[y] * 3
    return x.astype(np.float32), y


@dataclasses.dataclass
class Case:
    """A learner on a 4-class problem whose label space has a 5th class that never appears.
    `seen_only`: classes absent from the labelled set get probability exactly 0 (the linear head
    fits the seen classes; a finetuned network's head, as in the paper, covers every class)."""

    make: Callable[[], object]
    y: np.ndarray
    train: np.ndarray
    test: np.ndarray
    seen_only: bool


def _linear(solver: str) -> Callable[[pytest.FixtureRequest], Case]:
    def case(request) -> Case:
        x, y = _data(4)
        return Case(lambda: LinearLearner(x, 5, LinearConfig(solver=solver)), y, np.arange(200), np.arange(300, 400),
                    True)
    return case


def _finetune(modality: str) -> Callable[[pytest.FixtureRequest], Case]:
    """A tiny random-init timm GroupNorm model on class-coloured images, or a tiny BERT on keyword texts."""
    def case(request) -> Case:
        from embedcache.backbones import create_backbone
        from embedcache.datasets import create_dataset
        from embedcache.datasets.synthetic import write_image_manifest, write_text_jsonl
        from embedcache.learners.finetune import FinetuneLearner, FinetuneOptions, default_recipe

        folder = request.getfixturevalue("tmp_path")
        options = FinetuneOptions(device="cpu", num_workers=0)
        if modality == "image":
            data = create_dataset("manifest", write_image_manifest(folder / "images", n=64, size=32, num_classes=4))
            spec, weights = "timm:test_efficientnet_gn", "random"
            recipe = default_recipe("image", {"resize": "36", "crop": "32", "eval_resize": "32", "batch_size": "8",
                                              "schedule": "0,20"})
        else:
            words = ("great", "awful", "fine", "broken")
            data = create_dataset("jsonl", write_text_jsonl(folder / "t.jsonl", n=64, keywords=words, words=4))
            spec, weights = f"hf:{request.getfixturevalue('tiny_bert')}", "pretrained"
            recipe = default_recipe("text", {"lr": "3e-3", "batch_size": "8", "max_steps": "40"})

        def make():
            return FinetuneLearner(data, create_backbone(spec, weights=weights), 5, recipe, options)
        rows = np.arange(64)
        train = rows % 8 < 4  # every class in both halves
        return Case(make, data.metadata.label, rows[train], rows[~train], False)
    return case


LEARNERS = {
    "linear-newton": _linear("newton"),
    "linear-lbfgs": _linear("lbfgs"),
    "finetune-image": _finetune("image"),
    "finetune-text": _finetune("text"),
}


@pytest.mark.parametrize("name", LEARNERS)
def test_every_learner_conforms(name, request):
    case = LEARNERS[name](request)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks run faster on one thread
    try:
        learner = case.make()
        assert learner.fit(case.train, case.y[case.train]) is learner
        proba = learner.predict_proba(case.test)
        again = case.make().fit(case.train, case.y[case.train]).predict_proba(case.test)
    finally:
        torch.set_num_threads(threads)
    assert proba.shape == (len(case.test), 5) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    assert (proba[:, 4] == 0).all() if case.seen_only else (proba.argmax(1) != 4).all()
    assert (proba.argmax(1) == case.y[case.test]).mean() > 0.6
    np.testing.assert_array_equal(proba, again)
    assert set(learner.training_) >= {"steps", "loss_initial", "loss_final", "stopped_by"}
    assert learner.training_["loss_final"] < learner.training_["loss_initial"]
    assert isinstance(learner.warm_start, bool) and isinstance(learner.describe(), dict)


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
@pytest.mark.parametrize("classes, C, standardize", [(2, 1.0, False), (2, 0.05, True), (3, 0.5, False),
                                                     (5, 2.0, True)])
def test_linear_head_matches_scikit_learn(solver, classes, C, standardize):
    x, y = _data(classes)
    rows = np.arange(150)
    learner = LinearLearner(x, classes, LinearConfig(C=C, standardize=standardize, solver=solver))
    reference = x.astype(np.float64)
    if standardize:  # statistics of the rows given to prepare()
        learner.prepare(np.arange(600), {})
        reference = (reference - reference.mean(0)) / reference.std(0)
    ours = learner.fit(rows, y[rows]).predict_proba(np.arange(600))
    sk = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(reference[rows], y[rows])
    assert np.abs(ours - sk.predict_proba(reference)).max() < 1e-3
    assert learner.training_["stopped_by"] == "converged"


def test_warm_start_starts_closer_and_reaches_the_cold_start_solution():
    x, y = _data(2, dim=300)
    warm = LinearLearner(x, 2, LinearConfig(C=0.3))
    cold = LinearLearner(x, 2, LinearConfig(C=0.3, warm_start=False))
    for n in (40, 45, 50, 55):
        warm.fit(np.arange(n), y[:n])
        cold.fit(np.arange(n), y[:n])
    np.testing.assert_allclose(warm.predict_proba(np.arange(600)), cold.predict_proba(np.arange(600)), atol=1e-5)
    assert warm.training_["loss_initial"] < 0.5 * cold.training_["loss_initial"]
    assert warm.training_["loss_final"] == pytest.approx(cold.training_["loss_final"], rel=1e-9)


def test_one_class_and_bad_labels():
    x, y = _data(2)
    learner = LinearLearner(x, 3).fit(np.arange(5), np.full(5, 2))
    assert (learner.predict_proba(np.arange(3)) == [0, 0, 1]).all() and learner.training_["stopped_by"] == "one_class"
    with pytest.raises(ConfigError, match="labels must be in 0..2"):
        learner.fit(np.arange(3), np.array([0, 1, 3]))
    with pytest.raises(ConfigError, match="--solver"):
        LinearConfig(solver="sgd")


@pytest.mark.parametrize("strategy", ["least-confidence", "entropy", "margin"])
@pytest.mark.parametrize("classes", [2, 4])
def test_linear_fused_ranking_equals_scoring_its_probabilities(strategy, classes):
    """The linear learner ranks the pool through embedcache.kernels (a contiguous block, the
    labelled rows masked); that must agree with the acquisition's unfused path on the same rows up
    to ties (the determinism contract), and give the same bits when asked twice."""
    from embedcache.scoring import PROBABILITY_SCORES, top_k, topk_disagreement

    x, y = _data(classes)
    x[400:450] = x[300]  # planted ties: identical rows score identically
    pool = np.arange(100, 600)
    learner = LinearLearner(x, classes)
    learner.prepare(pool, {"val": np.arange(0, 100)})
    learner.fit(np.arange(100, 140), y[100:140])
    rng = np.random.default_rng(0)
    for candidates in (pool[40:], np.sort(rng.choice(pool[40:], 60, replace=False))):  # dense, sparse
        for seed in (0, 1):
            fused = learner.top_k(candidates, strategy, 25, seed)
            scores = PROBABILITY_SCORES[strategy](learner.predict_proba(candidates))
            assert topk_disagreement(fused, top_k(scores, candidates, 25, seed)) is None
            again = learner.top_k(candidates, strategy, 25, seed)
            np.testing.assert_array_equal(fused[0], again[0])
            np.testing.assert_array_equal(fused[1], again[1])
    evaluated = np.arange(0, 100)  # the prepared block, and the same rows gathered in another order
    np.testing.assert_allclose(learner.predict_proba(evaluated), learner.predict_proba(evaluated[::-1])[::-1],
                               rtol=1e-5, atol=1e-6)
