"""Posterior samples of a logistic-regression head, for BALD, BatchBALD and stochastic BALD batches.

The head is the linear learner's: logits = x·W + b on features x (standardised, for the linear
learner), fitted by minimising C·Σ cross-entropy + ½‖W‖² with b unpenalised; binary heads have one
column (sigmoid), multiclass heads one per class (softmax).

* `laplace_samples`: the Laplace approximation around the fitted head, N(θ̂, H⁻¹) with H the Hessian
  of that objective at θ̂ = (W, b) (MacKay 1992; last-layer Laplace as in Daxberger et al., "Laplace
  Redux", NeurIPS 2021; in finetune mode x are the finetuned network's penultimate features). H has
  D·C' + C' rows (D = 2048, C' = 182 would be 373,000), so it is never formed: with L_j Lⱼᵀ = H_j the
  per-row Hessian of the cross-entropy in the logits, H = diag(I, 0) + [A B]ᵀ[A B] where A maps W and
  B maps b to the √C-scaled, L-whitened logits of the n labelled rows. Everything is then solved in
  that n·C'-dimensional space (the representer space of the linear learner's Newton solver):
  G = I + AAᵀ (Cholesky), b's marginal precision BᵀG⁻¹B (C' × C'), and W given b by Matheron's rule,
  W = Ŵ + z₁ - AᵀG⁻¹(A z₁ + z₂ + B Δb) with z₁, z₂ standard normal (exact samples of the conditional,
  in O(n·C'·D) per sample). For softmax heads b is only determined up to a constant added to every
  class (the probabilities do not change): samples keep Σ Δb = 0.
* `bootstrap_samples`: a seeded ensemble of heads refitted on stratified bootstrap resamples of the
  labelled rows (each class resampled within itself, so every member sees every class).

T = 100 samples by default (batchbald_redux's example draws 100 MC-dropout samples). Samples are
numpy arrays; `HeadSamples.proba` turns them into the `[n, T, C]` probabilities the BALD functions read.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import scipy.linalg

from embedcache.errors import ConfigError

N_SAMPLES = 100
#: Largest n·C' whose (n·C')² representer system is solved (8192² float64 = 512 MiB).
_MAX_VARIABLES = 8192


@dataclasses.dataclass(frozen=True)
class HeadSamples:
    """T samples of a head: coef [T, D, C'] and intercept [T, C'] (C' = 1: a binary sigmoid head)."""

    coef: np.ndarray
    intercept: np.ndarray

    def proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities [n, T, C] (float32) of rows of features; a binary head gives [1 - σ, σ]."""
        features = np.asarray(features, dtype=np.float32)
        n_samples, dim, width = self.coef.shape
        if features.ndim != 2 or features.shape[1] != dim:
            raise ConfigError(f"features must be [rows, {dim}], got shape {features.shape}")
        stacked = np.ascontiguousarray(self.coef.transpose(1, 0, 2).reshape(dim, n_samples * width), dtype=np.float32)
        logits = (features @ stacked).reshape(len(features), n_samples, width) + self.intercept.astype(np.float32)
        if width == 1:
            positive = 1.0 / (1.0 + np.exp(-logits[..., 0]))
            return np.stack([1.0 - positive, positive], axis=2)
        logits -= logits.max(axis=2, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=2, keepdims=True)
        return logits

    def folded(self, mean: np.ndarray, scale: np.ndarray) -> "HeadSamples":
        """The same heads acting on raw features x when they were fitted on (x - mean) / scale."""
        mean, scale = np.asarray(mean, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        coef = self.coef / scale[None, :, None]
        return HeadSamples(coef, self.intercept - np.einsum("d,tdc->tc", mean, coef))


def _check_head(features, coef, intercept, C: float, n_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64)
    if features.ndim != 2 or len(features) < 1:
        raise ConfigError(f"features must be [rows, dims] with at least one row, got shape {features.shape}")
    if coef.ndim != 2 or coef.shape[0] != features.shape[1] or intercept.shape != (coef.shape[1],):
        raise ConfigError(f"coef must be [{features.shape[1]}, C'] and intercept [C'], got {coef.shape} and "
                          f"{intercept.shape}")
    if coef.shape[1] == 2:
        raise ConfigError("a binary head has one column (sigmoid); a 2-column softmax head is overparameterised")
    if not (np.isfinite(features).all() and np.isfinite(coef).all() and np.isfinite(intercept).all()):
        raise ConfigError("features, coef and intercept must be finite")
    if not (isinstance(C, (int, float, np.integer, np.floating)) and C > 0):
        raise ConfigError(f"C must be positive, got {C!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}")
    return features, coef, intercept


def _hessian_roots(logits: np.ndarray) -> np.ndarray:
    """L_j [n, C', C'] with L_j L_jᵀ = H_j, the Hessian of the cross-entropy in the logits of row j:
    √(p(1-p)) for a sigmoid, diag(√p) - p √pᵀ for a softmax (since Σ p = 1)."""
    if logits.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.sqrt(p * (1.0 - p))[:, None, None]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    root = np.sqrt(p)
    return np.einsum("jc,ce->jce", root, np.eye(p.shape[1])) - p[:, :, None] * root[:, None, :]


@dataclasses.dataclass
class _Laplace:
    """The representer-space factors of the Laplace posterior."""

    features: np.ndarray  # X [n, D]
    roots: np.ndarray  # L [n, C', C'], L[j, e, c]
    C: float
    cholesky: np.ndarray  # of G = I + AAᵀ [n·C', n·C']
    bias_basis: np.ndarray  # [C', r]: Δb = bias_basis @ z, z standard normal

    def apply_a(self, weights: np.ndarray) -> np.ndarray:
        """A W for weights [T, D, C'] → [T, n, C']."""
        logits = np.einsum("jd,tde->tje", self.features, weights)
        return np.sqrt(self.C) * np.einsum("jec,tje->tjc", self.roots, logits)

    def apply_b(self, bias: np.ndarray) -> np.ndarray:
        """B b for biases [T, C'] → [T, n, C']."""
        return np.sqrt(self.C) * np.einsum("jec,te->tjc", self.roots, bias)

    def apply_a_transposed(self, values: np.ndarray) -> np.ndarray:
        """Aᵀ v for v [T, n, C'] → [T, D, C']."""
        whitened = np.einsum("jec,tjc->tje", self.roots, values)
        return np.sqrt(self.C) * np.einsum("jd,tje->tde", self.features, whitened)

    def solve(self, values: np.ndarray) -> np.ndarray:
        """G⁻¹ v for v [T, n, C']."""
        flat = values.reshape(len(values), -1).T
        return scipy.linalg.cho_solve((self.cholesky, True), flat).T.reshape(values.shape)

    def draw(self, z_weights: np.ndarray, z_data: np.ndarray, z_bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ΔW [T, D, C'], Δb [T, C']) from standard normal z₁ [T, D, C'], z₂ [T, n, C'], z_b [T, r]."""
        delta_bias = z_bias @ self.bias_basis.T
        right = self.apply_a(z_weights) + z_data + self.apply_b(delta_bias)
        return z_weights - self.apply_a_transposed(self.solve(right)), delta_bias


def _laplace(features: np.ndarray, coef: np.ndarray, intercept: np.ndarray, C: float) -> _Laplace:
    n, width = len(features), coef.shape[1]
    roots = _hessian_roots(features @ coef + intercept)
    whitening = roots.transpose(0, 2, 1).reshape(n * width, width)  # P[(j, c), e] = L[j, e, c]
    gram = features @ features.T
    g = C * (whitening @ whitening.T) * np.repeat(np.repeat(gram, width, axis=0), width, axis=1)
    g[np.diag_indices_from(g)] += 1.0
    cholesky = scipy.linalg.cholesky(g, lower=True)
    # b's marginal precision Bᵀ G⁻¹ B with B = √C P
    solved = scipy.linalg.cho_solve((cholesky, True), whitening)
    precision = C * whitening.T @ solved
    precision = (precision + precision.T) / 2
    values, vectors = np.linalg.eigh(precision)
    keep = values > 1e-10 * max(values.max(), 1e-300)
    bias_basis = vectors[:, keep] / np.sqrt(values[keep])
    return _Laplace(features, roots, C, cholesky, bias_basis)


def laplace_samples(features: np.ndarray, coef: np.ndarray, intercept: np.ndarray, C: float,
                    n_samples: int = N_SAMPLES, seed: int = 0) -> HeadSamples:
    """T samples of the Laplace posterior of a fitted logistic head.

    features: the n labelled rows the head was fitted on [n, D] (in the space the head acts on);
    coef [D, C'], intercept [C']: the fitted head (C' = 1 for a sigmoid); C: the fit's inverse L2
    strength (the objective C·Σ CE + ½‖W‖²). Draws come from a numpy Generator seeded with `seed`.
    Memory and time: O((n·C')² + n·C'·D) per call plus O(n·C'·D) per sample; nothing D × D.
    """
    features, coef, intercept = _check_head(features, coef, intercept, C, n_samples)
    if len(features) * coef.shape[1] > _MAX_VARIABLES:
        raise ConfigError(f"the Laplace posterior solves an (n·C')² system: {len(features)} rows × {coef.shape[1]} "
                          "classes is too many; use bootstrap_samples")
    posterior = _laplace(features, coef, intercept, float(C))
    rng = np.random.default_rng(seed)
    n, dim, width = len(features), coef.shape[0], coef.shape[1]
    delta_coef, delta_bias = posterior.draw(rng.standard_normal((n_samples, dim, width)),
                                            rng.standard_normal((n_samples, n, width)),
                                            rng.standard_normal((n_samples, posterior.bias_basis.shape[1])))
    return HeadSamples(coef[None] + delta_coef, intercept[None] + delta_bias)


def bootstrap_samples(features: np.ndarray, targets: np.ndarray,
                      fit: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                      n_samples: int = N_SAMPLES, seed: int = 0) -> HeadSamples:
    """T heads, each `fit(features[idx], targets[idx])` -> (coef [D, C'], intercept [C']) on a stratified
    bootstrap resample idx of the labelled rows (drawn from a numpy Generator seeded with `seed`)."""
    features = np.asarray(features)
    targets = np.asarray(targets)
    if features.ndim != 2 or targets.shape != (len(features),):
        raise ConfigError(f"features [n, D] and targets [n] must have one row each, got {features.shape} and "
                          f"{targets.shape}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ConfigError(f"n_samples must be a positive integer, got {n_samples!r}")
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(targets == value) for value in np.unique(targets)]
    coefs, intercepts = [], []
    for _ in range(n_samples):
        resample = np.sort(np.concatenate([rng.choice(rows, size=len(rows), replace=True) for rows in by_class]))
        coef, intercept = fit(features[resample], targets[resample])
        coefs.append(np.asarray(coef, dtype=np.float64))
        intercepts.append(np.asarray(intercept, dtype=np.float64))
    return HeadSamples(np.stack(coefs), np.stack(intercepts))
