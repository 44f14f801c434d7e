"""Posterior samples of the linear head: the Laplace sampler's covariance equals the inverse of the
brute-force Hessian (D·C' + C' square), bootstrap ensembles, and the probabilities they give."""

from __future__ import annotations

import numpy as np
import pytest

from embedcache.errors import ConfigError
from embedcache.learners.posterior import HeadSamples, _laplace, bootstrap_samples, laplace_samples


def head(n=7, dim=3, width=1, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dim)), rng.standard_normal((dim, width)), rng.standard_normal(width))


def brute_force_covariance(x, coef, intercept, C):
    """The pseudo-inverse of the full Hessian of C·Σ CE + ½‖W‖² in θ = (W row-major, b) (b unpenalised)."""
    n, dim = x.shape
    width = coef.shape[1]
    logits = x @ coef + intercept
    if width == 1:
        p = 1 / (1 + np.exp(-logits[:, 0]))
        hessians = [np.array([[q * (1 - q)]]) for q in p]
    else:
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        hessians = [np.diag(q) - np.outer(q, q) for q in p]
    augmented = np.hstack([x, np.ones((n, 1))])
    hessian = sum(C * np.kron(np.outer(a, a), h) for a, h in zip(augmented, hessians))
    hessian[:dim * width, :dim * width] += np.eye(dim * width)
    return np.linalg.pinv(hessian, rcond=1e-12, hermitian=True)


def sampler_covariance(x, coef, intercept, C):
    """The covariance of the sampler's linear map, read off by feeding it every basis vector."""
    posterior = _laplace(x, coef, intercept, C)
    n, dim = x.shape
    width = coef.shape[1]
    rank = posterior.bias_basis.shape[1]
    sizes = (dim * width, n * width, rank)
    total = sum(sizes)
    z = np.eye(total)
    z_weights = z[:, :sizes[0]].reshape(total, dim, width)
    z_data = z[:, sizes[0]:sizes[0] + sizes[1]].reshape(total, n, width)
    z_bias = z[:, sizes[0] + sizes[1]:]
    delta_coef, delta_bias = posterior.draw(z_weights, z_data, z_bias)
    theta = np.concatenate([delta_coef.reshape(total, -1), delta_bias], axis=1)
    return theta.T @ theta


@pytest.mark.parametrize("width", [1, 3, 4])
@pytest.mark.parametrize("C", [0.5, 3.0])
def test_laplace_covariance_equals_the_brute_force_inverse_hessian(width, C):
    x, coef, intercept = head(width=width, seed=width)
    reference = brute_force_covariance(x, coef, intercept, C)
    np.testing.assert_allclose(sampler_covariance(x, coef, intercept, C), reference,
                               atol=1e-10 * np.abs(reference).max())


def test_laplace_samples_centre_on_the_fit_and_are_seeded():
    x, coef, intercept = head(n=5, width=3, seed=7)
    samples = laplace_samples(x, coef, intercept, C=1.0, n_samples=20_000, seed=1)
    assert samples.coef.shape == (20_000, 3, 3) and samples.intercept.shape == (20_000, 3)
    np.testing.assert_allclose(samples.coef.mean(0), coef, atol=0.05)
    np.testing.assert_allclose(samples.intercept.sum(1), intercept.sum())  # softmax: Σ Δb = 0
    again = laplace_samples(x, coef, intercept, C=1.0, n_samples=20_000, seed=1)
    assert np.array_equal(samples.coef, again.coef)
    assert not np.array_equal(samples.coef, laplace_samples(x, coef, intercept, C=1.0, n_samples=20_000, seed=2).coef)


def test_probabilities_and_folding_standardisation():
    rng = np.random.default_rng(2)
    raw = rng.standard_normal((9, 4)) * 3 + 1
    mean, scale = raw.mean(0), raw.std(0)
    samples = HeadSamples(rng.standard_normal((6, 4, 1)), rng.standard_normal((6, 1)))
    proba = samples.proba((raw - mean) / scale)
    assert proba.shape == (9, 6, 2) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(2), 1, atol=1e-6)
    np.testing.assert_allclose(samples.folded(mean, scale).proba(raw), proba, atol=1e-5)
    softmax = HeadSamples(rng.standard_normal((6, 4, 3)), rng.standard_normal((6, 3)))
    logits = np.einsum("nd,tdc->ntc", raw, softmax.coef) + softmax.intercept
    expected = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
    np.testing.assert_allclose(softmax.proba(raw), expected, rtol=1e-4)


def test_bootstrap_resamples_within_each_class():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 2))
    y = np.array([0] * 8 + [1] * 4)
    seen = []

    def fit(features, targets):
        seen.append((features, targets))
        return features.mean(0)[:, None], np.array([targets.mean()])

    samples = bootstrap_samples(x, y, fit, n_samples=5, seed=4)
    assert samples.coef.shape == (5, 2, 1) and len(seen) == 5
    assert all((targets == 0).sum() == 8 and (targets == 1).sum() == 4 for _, targets in seen)
    assert len({features.tobytes() for features, _ in seen}) == 5
    assert np.array_equal(samples.coef, bootstrap_samples(x, y, fit, n_samples=5, seed=4).coef)


@pytest.mark.parametrize("call, message", [
    (lambda x, w, b: laplace_samples(x, w, b, C=0.0), "C must be positive"),
    (lambda x, w, b: laplace_samples(x, w, b, C=1.0, n_samples=0), "n_samples must be a positive integer"),
    (lambda x, w, b: laplace_samples(x, w[:2], b, C=1.0), r"coef must be \[3, C'\]"),
    (lambda x, w, b: laplace_samples(x, np.hstack([w, w]), np.hstack([b, b]), C=1.0), "a binary head has one column"),
    (lambda x, w, b: laplace_samples(x * np.nan, w, b, C=1.0), "must be finite"),
    (lambda x, w, b: laplace_samples(np.zeros((9000, 3)), w, b, C=1.0), "use bootstrap_samples"),
    (lambda x, w, b: bootstrap_samples(x, np.zeros(3), lambda f, t: (w, b)), r"features \[n, D\] and targets \[n\]"),
    (lambda x, w, b: HeadSamples(w[None], b[None]).proba(np.zeros((2, 5))), r"features must be \[rows, 3\]"),
])
def test_bad_options_name_the_option(call, message):
    with pytest.raises(ConfigError, match=message):
        call(*head())
