"""Learners: the conformance checks on variants the registry's examples do not cover, and the linear
head's agreement with scikit-learn's LogisticRegression (probabilities within 1e-3)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from embedcache.errors import ConfigError
from embedcache.learners.linear import LinearConfig, LinearLearner
from embedcache.scoring import top_k
from embedcache.testing import LearnerExample, check_learner, gaussian_task


def _lbfgs(request) -> LearnerExample:
    x, y = gaussian_task(4)
    return LearnerExample(lambda: LinearLearner(x, 5, LinearConfig(solver="lbfgs")), y, np.arange(200),
                          np.arange(300, 400), 5, 0.6)


def _text(request) -> LearnerExample:
    """A tiny BERT finetuned on keyword texts of 4 classes (of 5)."""
    from embedcache.backbones import create_backbone
    from embedcache.datasets import create_dataset
    from embedcache.datasets.synthetic import write_text_jsonl
    from embedcache.learners.finetune import FinetuneLearner, FinetuneOptions, default_recipe

    folder = request.getfixturevalue("tmp_path")
    words = ("great", "awful", "fine", "broken")
    data = create_dataset("jsonl", write_text_jsonl(folder / "t.jsonl", n=64, keywords=words, words=4))
    recipe = default_recipe("text", {"lr": "3e-3", "batch_size": "8", "max_steps": "40"})
    spec = f"hf:{request.getfixturevalue('tiny_bert')}"

    def make():
        return FinetuneLearner(data, create_backbone(spec), 5, recipe, FinetuneOptions(device="cpu", num_workers=0))
    rows = np.arange(64)
    train = rows % 8 < 4  # every class in both halves
    return LearnerExample(make, data.metadata.label, rows[train], rows[~train], 5, 0.6)


#: Variants beyond the registry's examples (test_conformance.py runs those): the other linear solver, text finetuning.
VARIANTS = {"linear-lbfgs": _lbfgs, "finetune-text": _text}


@pytest.mark.parametrize("name", VARIANTS)
def test_learner_variants_conform(name, request):
    check_learner(VARIANTS[name](request))


def test_classes_absent_from_the_labelled_set():
    """The linear head fits the classes it has seen: an absent class has probability exactly 0 and logit
    -inf; with one class seen, every row is certain of it (and ranks by the tie rule alone)."""
    x, y = gaussian_task(4)
    learner = LinearLearner(x, 5).fit(np.arange(200), y[:200])
    assert (learner.predict_proba(np.arange(300, 400))[:, 4] == 0).all()
    assert np.isneginf(learner.predict_logits(np.arange(300, 400))[:, 4]).all()
    one = LinearLearner(x, 5).fit(np.arange(5), np.full(5, 2))
    np.testing.assert_array_equal(one.predict_logits(np.arange(2)), [[-np.inf, -np.inf, 0, -np.inf, -np.inf]] * 2)
    for strategy in ("least-confidence", "max-logit"):
        rows, scores = one.top_k(np.arange(10, 60), strategy, 5, seed=3)
        assert (scores == scores[0]).all() and np.array_equal(rows, top_k(np.zeros(50), np.arange(10, 60), 5, 3)[0])


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
@pytest.mark.parametrize("classes, C, standardize", [(2, 1.0, False), (2, 0.05, True), (3, 0.5, False),
                                                     (5, 2.0, True)])
def test_linear_head_matches_scikit_learn(solver, classes, C, standardize):
    x, y = gaussian_task(classes)
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
    x, y = gaussian_task(2, dim=300)
    warm = LinearLearner(x, 2, LinearConfig(C=0.3))
    cold = LinearLearner(x, 2, LinearConfig(C=0.3, warm_start=False))
    for n in (40, 45, 50, 55):
        warm.fit(np.arange(n), y[:n])
        cold.fit(np.arange(n), y[:n])
    np.testing.assert_allclose(warm.predict_proba(np.arange(600)), cold.predict_proba(np.arange(600)), atol=1e-5)
    assert warm.training_["loss_initial"] < 0.5 * cold.training_["loss_initial"]
    assert warm.training_["loss_final"] == pytest.approx(cold.training_["loss_final"], rel=1e-9)


def test_one_class_and_bad_labels():
    x, y = gaussian_task(2)
    learner = LinearLearner(x, 3).fit(np.arange(5), np.full(5, 2))
    assert (learner.predict_proba(np.arange(3)) == [0, 0, 1]).all() and learner.training_["stopped_by"] == "one_class"
    with pytest.raises(ConfigError, match="labels must be in 0..2"):
        learner.fit(np.arange(3), np.array([0, 1, 3]))
    with pytest.raises(ConfigError, match="solver: must be one of"):
        LinearConfig(solver="sgd")


@pytest.mark.parametrize("strategy", ["least-confidence", "entropy", "margin"])
@pytest.mark.parametrize("classes", [2, 4])
def test_linear_fused_ranking_equals_scoring_its_probabilities(strategy, classes):
    """The linear learner ranks the pool through embedcache.kernels (a contiguous block, the
    labelled rows masked); that must agree with the acquisition's unfused path on the same rows up
    to ties (the determinism contract), and give the same bits when asked twice."""
    from embedcache.scoring import PROBABILITY_SCORES, top_k, topk_disagreement

    x, y = gaussian_task(classes)
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
