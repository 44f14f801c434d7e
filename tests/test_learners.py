"""Learners: one conformance test every learner passes, and the linear head's agreement with
scikit-learn's LogisticRegression (probabilities within 1e-3)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from embedcache.errors import ConfigError
from embedcache.learners.linear import LinearConfig, LinearLearner


def _data(classes: int, n: int = 600, dim: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, dim)) * rng.uniform(0.5, 3, dim) + rng.normal(size=dim) * 2
    x[:, :classes] += np.eye(classes)[y] * 3
    return x.astype(np.float32), y


LEARNERS = {
    "linear-newton": lambda x, c: LinearLearner(x, c, LinearConfig(solver="newton")),
    "linear-lbfgs": lambda x, c: LinearLearner(x, c, LinearConfig(solver="lbfgs")),
}


@pytest.mark.parametrize("name", LEARNERS)
def test_every_learner_conforms(name):
    x, y = _data(4)
    learner = LEARNERS[name](x, 5)  # class 4 never appears
    rows = np.arange(0, 200)
    assert learner.fit(rows, y[rows]) is learner
    proba = learner.predict_proba(np.arange(300, 400))
    assert proba.shape == (100, 5) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    assert (proba[:, 4] == 0).all()
    assert (proba.argmax(1) == y[300:400]).mean() > 0.6
    again = LEARNERS[name](x, 5).fit(rows, y[rows]).predict_proba(np.arange(300, 400))
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
