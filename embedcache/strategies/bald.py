"""BALD and BatchBALD from posterior samples of the model's class probabilities.

BALD (Houlsby, Huszár, Ghahramani & Lengyel, "Bayesian Active Learning for Classification and
Preference Learning", 2011; Gal, Islam & Ghahramani, "Deep Bayesian Active Learning with Image Data",
ICML 2017) scores a row by the mutual information between its label and the model parameters,
estimated from T posterior samples p_t(y | x):

    BALD(x) = H[mean_t p_t(y | x)] - mean_t H[p_t(y | x)],

and takes the top k. BatchBALD (Kirsch, van Amersfoort & Gal, "BatchBALD: Efficient and Diverse Batch
Acquisition for Deep Bayesian Active Learning", NeurIPS 2019) grows the batch greedily by the mutual
information of the *joint* labels of the batch, I(y_1..y_n; w) = H(y_1..y_n) - Σ_i mean_t H[p_t(y_i)],
so a second row that would say the same as the first adds little. The joint entropy is exact while
the C^(n-1) label configurations of the rows picked so far number at most `joint_samples` (M);
beyond that, M configurations are sampled (M/T from each posterior sample, as the authors'
batchbald_redux does, but extended rather than redrawn as rows join the batch) and the entropy is an
importance-weighted estimate.

The batch's mutual information is submodular, so a row's gain can only shrink as the batch grows: each
step evaluates the rows in order of their previous gain and stops once no unevaluated row's previous
gain reaches the best gain found (lazy greedy, `lazy=True`): with exact joint entropies the picks equal
full evaluation; with sampled ones, whose estimates are not exactly submodular, they can differ where
gains are within the sampling noise. `lazy=False` evaluates every row at every step.

Probabilities are `[n, T, C]` (rows, posterior samples, classes), aligned with `candidates`.
"""

from __future__ import annotations


import numpy as np
import scipy.special
import torch

from embedcache.errors import ConfigError
from embedcache.scoring import top_k
from embedcache.strategies._common import (best, check_k, check_positive_int, check_rows, device_of, generator,
                                           log_, map_parallel, one_thread, to_device, to_host)

#: Sampled label configurations once exact enumeration would exceed them (see the module docstring).
JOINT_SAMPLES = 10_000
#: Configurations × classes × rows evaluated at once: on the CPU a piece that stays in a core's L2
#: cache through the product, the logarithm and the weighted sum (512 KiB of float32); 128 MiB on a GPU.
_CPU_BLOCK_ELEMENTS = 1 << 17
_GPU_BLOCK_ELEMENTS = 1 << 24
#: Probabilities BALD scores at once (16 MiB of float32).
_SCORE_BLOCK_ELEMENTS = 1 << 22
#: Rows a lazy step evaluates first; each further round doubles.
_FIRST_LAZY = 128


def check_proba_samples(proba_samples, n_rows: int, name: str = "proba_samples") -> np.ndarray:
    """[n, T, C] float probabilities: non-negative, summing to 1 over classes (within 1e-3)."""
    proba = np.asarray(proba_samples)
    if proba.ndim != 3 or len(proba) != n_rows or proba.shape[1] < 1 or proba.shape[2] < 2 \
            or not np.issubdtype(proba.dtype, np.floating):
        raise ConfigError(f"{name} must be float [rows, samples, classes] with one row per candidate ({n_rows}) "
                          f"and at least 2 classes, got shape {proba.shape} of {proba.dtype}")
    # NaN fails both comparisons, infinities the sum (einsum: numpy's reductions over a short inner axis are slower)
    if not (proba.min() >= 0 and np.abs(np.einsum("ntc->nt", proba) - 1).max() <= 1e-3):
        raise ConfigError(f"{name} must hold probabilities: finite, non-negative, summing to 1 over classes")
    return proba


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """-Σ p log p (0 log 0 = 0)."""
    return -scipy.special.xlogy(p, p).sum(axis=axis)


def _entropies(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H[mean_t p_t], mean_t H[p_t]) per row of `[n, T, C]` probabilities (float64), a block of rows at
    a time (memory: the input and one block)."""
    n, n_samples, n_classes = proba.shape
    of_mean, conditional = np.empty(n), np.empty(n)
    step = max(1, _SCORE_BLOCK_ELEMENTS // (n_samples * n_classes))
    with one_thread():
        for lo in range(0, n, step):
            block = proba[lo:lo + step]
            logs = log_(np.maximum(block, np.finfo(block.dtype).tiny))  # 0 log 0 = 0
            flat = block.reshape(len(block), -1)
            conditional[lo:lo + step] = -np.einsum("ij,ij->i", flat, logs.reshape(len(block), -1),
                                                   dtype=np.float64) / n_samples
            mean = np.einsum("ntc->nc", block).astype(np.float64) / n_samples  # einsum: 4x a short-axis sum
            of_mean[lo:lo + step] = _entropy(mean)
    return of_mean, conditional


def bald_scores(proba_samples: np.ndarray) -> np.ndarray:
    """BALD's mutual information per row (nats, float64) of `[n, T, C]` posterior probabilities."""
    of_mean, conditional = _entropies(np.asarray(proba_samples))
    return of_mean - conditional


def bald(proba_samples: np.ndarray, candidates: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The k candidates with the highest BALD score, best first (equal scores by `scoring.tie_priority`)."""
    given = np.asarray(candidates)
    check_rows(given, np.iinfo(np.int64).max, "candidates")
    k = check_k(k, len(given))
    scores = bald_scores(check_proba_samples(proba_samples, len(given)))
    return top_k(scores, given.astype(np.int64), k, seed)


def batchbald(proba_samples: np.ndarray, candidates: np.ndarray, k: int, seed: int, *,
              joint_samples: int = JOINT_SAMPLES, lazy: bool = True,
              device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """BatchBALD: k candidates grown greedily by the joint mutual information of their labels.

    Returns (rows, scores) in the order picked; a score is the batch's estimated mutual information
    once the pick joined it (nats). The seed drives the configuration sampling; equal gains go by
    `scoring.tie_priority(row, seed)`.
    """
    given = np.asarray(candidates)
    check_rows(given, np.iinfo(np.int64).max, "candidates")
    rows = given.astype(np.int64)
    k = check_k(k, len(rows))
    joint_samples = check_positive_int(joint_samples, "joint_samples")
    proba = check_proba_samples(proba_samples, len(rows))  # float32 stays float32: pieces are cast when evaluated
    n, n_samples, n_classes = proba.shape
    if joint_samples < n_samples:
        raise ConfigError(f"joint_samples ({joint_samples}) must be at least the number of posterior samples "
                          f"({n_samples}): each posterior sample draws joint_samples / samples configurations")
    resolved = device_of(device)
    configurations = _Configurations(n_samples, joint_samples, generator(seed, "batchbald"))
    of_mean, conditional = _entropies(proba)
    gain = of_mean - conditional  # BALD: the first gain, an upper bound of the later ones
    chosen: list[int] = []
    total = 0.0
    scores = np.empty(k, dtype=np.float64)
    for step in range(k):
        if step == 0:
            evaluated = np.arange(n)
        else:
            configurations.add(proba[chosen[-1]].astype(np.float64))
            joint, weights = configurations.joint, configurations.weights
            base = _joint_entropy_alone(joint, weights)
            evaluated = _evaluate(proba, joint, weights, base, conditional, gain, lazy, resolved)
        pick = int(evaluated[best(gain[evaluated], rows[evaluated], seed)])
        total += gain[pick]
        scores[step] = total
        chosen.append(pick)
        gain[pick] = -np.inf
    return rows[chosen], scores


class _Configurations:
    """Label configurations of the rows picked so far and p(configuration | w_t) for each [M, T].

    All C^m configurations while they number at most `limit` (weights None: exact); beyond that,
    `limit` sampled ones, `limit / T` from each posterior sample t (every picked row's label drawn
    from p_t), with importance weights 1 / (M q(configuration)), q the mixture over the samples (each
    configuration's row kept divided by its q, so the weights are 1 / M and nothing underflows).
    A sampled configuration stays a valid draw when a row is added (its new label is drawn from the
    same p_t), so the samples are extended rather than redrawn: successive steps share their Monte
    Carlo noise, which keeps the previous step's gains good bounds for the lazy evaluation.
    """

    def __init__(self, n_samples: int, limit: int, rng: np.random.Generator):
        self.limit, self.rng = limit, rng
        self.picked: list[np.ndarray] = []
        self.joint = np.ones((1, n_samples))
        self.weights: np.ndarray | None = None
        self.origin: np.ndarray | None = None  # posterior sample each configuration was drawn from

    def add(self, proba_row: np.ndarray) -> None:
        """Add a picked row's probabilities [T, C]."""
        self.picked.append(proba_row)
        n_samples, n_classes = proba_row.shape
        if self.weights is None and n_classes ** len(self.picked) <= self.limit:
            # configurations (.., y_new) with the new label varying fastest
            self.joint = (self.joint[:, None, :] * proba_row.T[None, :, :]).reshape(-1, n_samples)
            return
        if self.weights is None:  # leaving the exact regime: draw every picked row's labels
            self.origin = np.repeat(np.arange(n_samples), self.limit // n_samples)
            self.joint = np.ones((len(self.origin), n_samples))
            rows = self.picked
        else:
            rows = [proba_row]
        for row in rows:
            cumulative = np.cumsum(row[self.origin], axis=1)  # [M, C]: p_t(y) of each configuration's t
            draws = self.rng.random(len(self.origin))
            labels = np.minimum((cumulative <= draws[:, None]).sum(axis=1), n_classes - 1)
            self.joint *= row[:, labels].T  # p_t'(y) for every t'
            # Rescaled by its mixture q per configuration (the products would underflow in long batches):
            # the estimate's weights 1 / (M q) become 1 / M, and H(chosen), the same for every row x, drops
            # out of the gains, so the joint entropy is the estimate less H(chosen).
            self.joint /= self.joint.mean(axis=1, keepdims=True)
        self.weights = np.full(len(self.joint), 1.0 / len(self.joint))


def _joint_entropy_alone(joint: np.ndarray, weights: np.ndarray | None) -> float:
    """H(y_chosen): exact, or the importance-weighted estimate."""
    q = joint.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(q), 0.0)
    return float(-(terms if weights is None else terms * weights).sum())


def _evaluate(proba, joint, weights, base, conditional, gain, lazy, device) -> np.ndarray:
    """Update `gain` (H(chosen, y_x) - H(chosen) - mean_t H[p_t(y_x)]) of the rows that need it; returns them.

    Exact joint entropies are computed in float64; sampled ones, whose Monte Carlo error (about
    1/√M) dwarfs float32 rounding, in float32 (twice the throughput)."""
    n, n_samples, n_classes = proba.shape
    dtype = np.float64 if weights is None else np.float32
    elements = _CPU_BLOCK_ELEMENTS if device.type == "cpu" else _GPU_BLOCK_ELEMENTS
    block = max(1, elements // (len(joint) * n_classes))
    joint_device = to_device((joint / n_samples).astype(dtype), device)
    weights_device = None if weights is None else to_device(weights.astype(dtype), device)

    def update(part: np.ndarray) -> None:
        entropy = _joint_entropy_with(proba[part].astype(dtype), joint_device, weights_device, device)
        gain[part] = entropy - base - conditional[part]

    def update_blocks(part: np.ndarray) -> None:
        pieces = [part[lo:lo + block] for lo in range(0, len(part), block)]
        if device.type == "cpu":
            map_parallel(update, pieces)
        else:
            for piece in pieces:
                update(piece)

    open_rows = np.flatnonzero(np.isfinite(gain))
    if not lazy:
        update_blocks(open_rows)
        return open_rows
    order = open_rows[np.argsort(-gain[open_rows], kind="stable")]
    done, step = 0, _FIRST_LAZY
    while done < len(order):
        update_blocks(order[done:done + step])
        done = min(done + step, len(order))
        step *= 2
        # rows not evaluated yet keep their previous gain, an upper bound of the current one
        if done < len(order) and gain[order[done]] < gain[order[:done]].max():
            break
    return order[:done]


def _joint_entropy_with(proba_rows: np.ndarray, joint, weights, device) -> np.ndarray:
    """H(chosen, y_x) per row x: Σ_(config, c) of -P log P with P = Σ_t joint[config, t] p_t(c | x) / T."""
    b, n_samples, n_classes = proba_rows.shape
    stacked = to_device(np.ascontiguousarray(proba_rows.transpose(1, 0, 2).reshape(n_samples, b * n_classes)), device)
    p = joint @ stacked  # [M, b·C]
    if isinstance(p, np.ndarray):  # P log P, with 0 log 0 = 0 (log of the smallest normal number instead)
        terms = log_(np.maximum(p, np.finfo(p.dtype).tiny))
        terms *= p
    else:
        terms = torch.special.xlogy(p, p)
    totals = terms.sum(0) if weights is None else weights @ terms
    return -to_host(totals).astype(np.float64).reshape(b, n_classes).sum(axis=1)
