"""BADGE: k-means++ seeding on gradient embeddings (Ash et al., "Deep Batch Active Learning by Diverse,
Uncertain Gradient Lower Bounds", ICLR 2020).

A candidate's gradient embedding is the gradient of the cross-entropy loss with respect to the last
linear layer's weights, taken at the model's own prediction ŷ = argmax p: g = (p - onehot(ŷ)) ⊗ h,
where h is the layer's input (a linear head's standardised cached vector, plus a constant 1 for the
intercept; a finetuned network's penultimate features). Its norm grows with uncertainty and its
direction follows the features, so k-means++ seeding on g picks uncertain and diverse rows: the
first pick is the largest ‖g‖ (as in the authors' code), each later one is drawn with probability
proportional to D², the squared distance to the nearest row picked so far.

g is never materialised ([n, C·D] would be 2 GB for 100,000 rows of a 10-class head on 512-d
features): with r = p - onehot(ŷ),
    ‖g_i - g_j‖² = ‖r_i‖²‖h_i‖² + ‖r_j‖²‖h_j‖² - 2 (r_i·r_j)(h_i·h_j),
so each pick costs one matrix-vector product over the candidates' features, read block by block
(standardisation is folded into that product, not applied to a copy). A binary head given as two
softmax columns gives D² twice those of its one-logit form, so the same picks.
"""

from __future__ import annotations

import numpy as np
import torch

from embedcache.errors import ConfigError
from embedcache.strategies._common import (Span, best, check_aligned, check_k, check_rows, check_table, device_of,
                                           generator, one_thread, row_norms2, to_device, to_host)


def badge(embeddings: np.ndarray, candidates: np.ndarray, proba: np.ndarray, k: int, seed: int, *,
          mean: np.ndarray | None = None, scale: np.ndarray | None = None, intercept: bool = False,
          device: str | torch.device = "cpu", block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BADGE's k-means++ seeding: k candidate rows, picked in order.

    embeddings: the table [N, D] of the last layer's inputs; candidates: table rows; proba: the
    model's class probabilities [len(candidates), C], aligned with `candidates` as given.
    mean, scale: h = (x - mean) / scale (per feature; default: x as it is). intercept: append a
    constant 1 to h (the bias's input). Returns (rows, scores): a score is the pick's D² at the time
    (‖g‖² for the first pick). D² sampling draws one uniform number per pick from a numpy Generator
    seeded with `seed`; equal ‖g‖ for the first pick, and the uniform fallback when every remaining D²
    is 0, go by `scoring.tie_priority(row, seed)`.
    """
    table = check_table(embeddings)
    given = np.asarray(candidates)
    proba = check_aligned(proba, len(given), "proba", 2).astype(np.float64)
    order = np.argsort(given, kind="stable")
    candidates = check_rows(given[order], len(table), "candidates")
    proba = proba[order]
    k = check_k(k, len(candidates))
    dim = table.shape[1]
    mean = _feature_vector(mean, dim, "mean", 0.0)
    scale = _feature_vector(scale, dim, "scale", 1.0)
    if not (scale > 0).all():
        raise ConfigError("scale must be positive for every feature")
    span = Span(table, candidates, device_of(device), block_rows)
    members = np.flatnonzero(span.member)

    residual = np.zeros((len(span), proba.shape[1]), dtype=np.float64)  # r = p - onehot(argmax p)
    residual[members] = proba
    residual[members, proba.argmax(axis=1)] -= 1.0
    r_norm2 = np.einsum("ij,ij->i", residual, residual)
    h_norm2 = _feature_norms2(span, mean, scale) + float(intercept)
    g_norm2 = np.where(span.member, r_norm2 * h_norm2, -np.inf)

    rng = generator(seed, "badge")
    rows, scores = np.empty(k, dtype=np.int64), np.empty(k, dtype=np.float64)
    pick = best(g_norm2, span.span, seed)
    rows[0], scores[0] = span.span[pick], g_norm2[pick]
    d2 = np.full(len(span), np.inf)
    d2[~span.member] = 0.0
    chosen = np.zeros(len(span), dtype=bool)
    with one_thread():  # one matrix-vector product per pick
        for i in range(1, k):
            chosen[pick] = True
            h_dot = _feature_dots(span, pick, mean, scale) + float(intercept)
            to_pick = r_norm2 * h_norm2 + r_norm2[pick] * h_norm2[pick] - 2.0 * (residual @ residual[pick]) * h_dot
            np.minimum(d2, np.maximum(to_pick, 0.0), out=d2)
            d2[chosen] = 0.0
            cumulative = np.cumsum(d2)
            if cumulative[-1] > 0:
                pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
            else:  # every remaining candidate's gradient equals a picked one's: uniform, by the tie rule
                pick = best(np.where(span.member & ~chosen, 0.0, -np.inf), span.span, seed)
            rows[i], scores[i] = span.span[pick], d2[pick]
    return rows, scores


def _feature_vector(values, dim: int, name: str, default: float) -> np.ndarray:
    if values is None:
        return np.full(dim, default, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (dim,) or not np.isfinite(values).all():
        raise ConfigError(f"{name} must be {dim} finite numbers (one per feature), got shape {values.shape}")
    return values


def _feature_norms2(span: Span, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """‖(x - mean) / scale‖² per span position (float64)."""
    norms = np.zeros(len(span), dtype=np.float64)
    standardised = bool(mean.any() or (scale != 1).any())
    shift = to_device(mean.astype(np.float32), span.device)
    inverse = to_device((1.0 / scale).astype(np.float32), span.device)

    def fill(lo, hi, block):
        if standardised:
            block = block - shift
            block *= inverse
        norms[lo:hi] = to_host(row_norms2(block))

    span.map_blocks(fill)
    return norms


def _feature_dots(span: Span, position: int, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """h_i · h_c for every span position i and one position c: x_i · w - mean · w with w = (x_c - mean) / scale²."""
    center = to_host(span.take(np.array([position])))[0].astype(np.float64)
    w = (center - mean) / (scale * scale)
    offset = float(mean @ w)
    w_device = to_device(w.astype(np.float32), span.device)
    dots = np.empty(len(span), dtype=np.float64)

    def fill(lo, hi, block):
        dots[lo:hi] = to_host(block @ w_device)

    span.map_blocks(fill)
    return dots - offset
