"""Linear mode: an L2-regularised logistic-regression head on cached embeddings.

The objective is scikit-learn's `LogisticRegression(C=C)`: `C · Σ_i CE_i + ½‖W‖²`, intercept
unpenalised, fitted on the classes present in the labelled set (binary logistic for two classes,
multinomial softmax for more). Probabilities of absent classes are 0.

Solvers (torch, CPU or CUDA, float64):
* "newton": Newton's method in the representer space. With few labelled points n and wide
  features D (AL's regime: n ≤ a few hundred, D = 2048) the weights are `W = Xᵀ A`, and each
  step solves an (n·C')×(n·C') system (C' = 1 for binary, C for multinomial) instead of touching
  a D×D Hessian. A factorisation is reused for up to two further steps (cheap triangular solves)
  unless progress slows. The intercept is an extra constant feature of large scale, so its
  penalty is below 1e-8 of the loss.
* "lbfgs": primal full-batch L-BFGS, for large n·C (iWildCam's 182 classes).
"auto" picks newton when n·C' ≤ 2048.

Warm start: when the labelled rows extend the previous fit's rows (the AL loop appends
acquisitions), the dual variables (or weights) of the last fit are the starting point, and the
Gram matrix is extended rather than recomputed.

Probabilities, logits and pool ranking go through `embedcache.kernels`, on contiguous copies of the
pool and evaluation rows; the fused `top_k` agrees with scoring `predict_proba` (or `predict_logits`)
up to ties (the determinism contract of `embedcache.scoring`). Capabilities (see
`embedcache.learners.base`): proba, logits, fused ranking, embed (the standardised cached vectors),
gradient embeddings and posterior samples (Laplace, or a bootstrap ensemble).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import numpy as np
import torch

from embedcache.cache import EmbeddingCache
from embedcache.devices import torch_threads
from embedcache.errors import ConfigError
from embedcache.learners.base import BaseLearner, fit_arguments, register_learner
from embedcache.scoring import LOGIT_SCORES, PROBABILITY_SCORES, top_k

SOLVERS = ("auto", "newton", "lbfgs")
_NEWTON_MAX_VARIABLES = 2048
#: Largest n·C' whose Laplace posterior `posterior_proba` computes (its Cholesky is cubic); beyond it, a bootstrap.
_LAPLACE_MAX_VARIABLES = 2048
#: Newton steps taken with a stale Hessian factor before refactorising, so the last steps converge
#: quadratically rather than linearly.
_MAX_STALE_STEPS = 2
#: Rows per block when checking features for NaN/inf (bounds the temporary copy).
_FINITE_CHECK_ROWS = 65536
#: Scale² of the constant feature standing in for the intercept, relative to the mean squared row norm.
_INTERCEPT_SCALE2 = 1e6


@dataclasses.dataclass(frozen=True)
class LinearConfig:
    """C: inverse L2 strength (scikit-learn's). standardize: scale features to zero mean and unit
    variance, with statistics of the pool rows given to `prepare` (or of all rows). tol: Newton
    stops when the decrement falls below tol × (1 + loss); L-BFGS when the gradient's max-norm does."""

    C: float = 1.0
    standardize: bool = True
    solver: str = "auto"
    tol: float = 1e-10
    max_iter: int = 100
    warm_start: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError(f"must be one of {SOLVERS}, got {self.solver!r}", param="solver")
        if not self.C > 0:
            raise ConfigError(f"--C must be positive, got {self.C}")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"{self.device!r}: expected cpu, cuda or cuda:N", param="device") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"{self.device}: CUDA is not available on this machine", param="device")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"{self.device}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                              param="device")

    def describe(self) -> dict:
        """What the run header records of the learner (part of a run's identity)."""
        return {"learner": "linear", **dataclasses.asdict(self)}


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """Run small CPU tensor ops on one thread: waking a second one costs more than the op, and its
    pool contends with BLAS's (3x slower runs measured on 2 cores)."""
    with torch_threads(1) if device.type == "cpu" else contextlib.nullcontext():
        yield


def _append_rows(buffer: torch.Tensor | None, used: int, rows: torch.Tensor) -> torch.Tensor:
    """`buffer[:used]` followed by `rows`, in a buffer that doubles when full (no copy per round)."""
    needed = used + len(rows)
    if buffer is None or len(buffer) < needed:
        grown = torch.empty((max(needed, 2 * used, 64), rows.shape[1]), dtype=rows.dtype, device=rows.device)
        if used:
            grown[:used] = buffer[:used]
        buffer = grown
    buffer[used:needed] = rows
    return buffer


@register_learner("linear")
class LinearLearner(BaseLearner):
    """Logistic regression on rows of a feature matrix: `fit(rows, y)` / `predict_proba(rows)`.

    `features` is the whole cache's `[N, D]` matrix, or an open `EmbeddingCache` to stream it from
    (pools larger than memory: each round scores the pool a block at a time through the fused scorer,
    and only the labelled rows, the evaluation rows and the statistics are held); rows are indices into
    it. After `fit`,
    `coef_` `[D, C']` and `intercept_` `[C']` act on raw (unstandardised) features, `classes_`
    lists the classes fitted, and `training_` holds the facts the run records keep.
    """

    def __init__(self, features: np.ndarray | torch.Tensor, num_classes: int, config: LinearConfig | None = None):
        self.config = config or LinearConfig()
        self.num_classes = int(num_classes)
        self.device = torch.device(self.config.device)
        self.streamed = isinstance(features, EmbeddingCache)
        self.features = features if self.streamed else torch.as_tensor(features).to(self.device, torch.float32)
        self.dim = int(self.features.shape[1]) if not self.streamed else features.dim
        self.n_rows = int(self.features.shape[0]) if not self.streamed else features.n_rows
        self._mean = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        self._scale = torch.ones_like(self._mean)
        self._stats_ready = not self.config.standardize
        self._pool: tuple[np.ndarray, np.ndarray, torch.Tensor] | None = None  # rows, row → position, block
        self._eval: dict[str, tuple[np.ndarray, torch.Tensor]] = {}
        self._state: dict | None = None  # warm-start state of the last fit
        self._posterior: tuple | None = None  # (fit state, (n_samples, seed, method), head samples)
        self.warm_start = self.config.warm_start

    # ------------------------------------------------------------------ loop hooks
    def describe(self) -> dict:
        return self.config.describe()

    def nonfinite_rows(self, rows: np.ndarray) -> np.ndarray:
        """The rows among `rows` whose features hold NaN or infinite values (checked in blocks)."""
        rows = np.asarray(rows, dtype=np.int64)
        bad = [rows[:0]]
        if self.streamed:
            for part, block in self.features.iter_chunks(rows):
                bad.append(part[~np.isfinite(block).all(axis=1)])
            return np.sort(np.concatenate(bad))
        for start in range(0, len(rows), _FINITE_CHECK_ROWS):
            part = rows[start:start + _FINITE_CHECK_ROWS]
            if self.device.type == "cpu":  # numpy gathers and checks some 30x faster than torch on CPU
                finite = np.isfinite(self.features.numpy()[part]).all(axis=1)
            else:
                finite = torch.isfinite(self.features[torch.as_tensor(part, device=self.device)]).all(1).cpu().numpy()
            bad.append(part[~finite])
        return np.concatenate(bad)

    def prepare(self, pool: np.ndarray, evaluation: dict[str, np.ndarray]) -> None:
        """Called once by the loop: standardisation statistics from the pool's features, and
        contiguous copies of the pool and evaluation rows, so rounds read them without gathering (a
        streamed pool stays on disk: its statistics come from one pass over it, and rounds stream it)."""
        pool = np.asarray(pool, dtype=np.int64)
        position = np.full(self.n_rows, -1, dtype=np.int64)
        position[pool] = np.arange(len(pool))
        self._pool = (pool, position, self.features if self.streamed else self._gather(pool))
        self._eval = {name: (np.asarray(rows, dtype=np.int64), self._gather(rows)) for name, rows in evaluation.items()}
        if self.config.standardize:
            self._set_stats(self._pool[2] if not self.streamed else pool)

    def share_prepared(self, other: "LinearLearner") -> None:
        """Use the pool and evaluation blocks and statistics `other` prepared (a learner of the same
        features and config), as `prepare` with the same rows would make them, without a copy: the
        batched engine's runs of one cache share one."""
        self._pool, self._eval = other._pool, other._eval
        self._mean, self._scale, self._stats_ready = other._mean, other._scale, other._stats_ready

    @property
    def prepared_pool(self) -> tuple[np.ndarray, np.ndarray, torch.Tensor | EmbeddingCache]:
        """(pool rows, row → position in the block or -1, the block of their features) from `prepare`; the
        block is the cache itself when the pool is streamed."""
        return self._pool

    @property
    def prepared_evaluation(self) -> dict[str, tuple[np.ndarray, torch.Tensor]]:
        """Per evaluation split: (rows, the block of their features) from `prepare`."""
        return self._eval

    def expand(self, outputs: np.ndarray, proba: bool = True) -> np.ndarray:
        """`[n, num_classes]` from the head's `[n, C]` outputs over the fitted classes: absent classes get
        probability 0 (logit -inf), as `predict_proba` / `predict_logits` give them."""
        full = np.full((len(outputs), self.num_classes), 0.0 if proba else -np.inf, dtype=np.float32)
        full[:, self.classes_] = outputs
        return full

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        """float32 features of `rows`, in the order given (read from the cache when it is streamed)."""
        if self.streamed:
            return torch.from_numpy(self.features.embeddings(np.asarray(rows, dtype=np.int64), np.float32))
        return self.features[torch.as_tensor(rows, device=self.device)]

    def _set_stats(self, x: torch.Tensor | np.ndarray | None) -> None:
        """Per-feature mean and standard deviation, accumulated in float64 in one pass: over the rows
        of a block, or, streamed, over the cache's rows `x` (None: all) a block at a time."""
        if self.streamed:
            total, squares, count = np.zeros(self.dim), np.zeros(self.dim), 0
            for _, block in self.features.iter_chunks(x):
                block = block.astype(np.float32, copy=False)
                total += block.sum(0, dtype=np.float64)
                squares += np.einsum("ij,ij->j", block, block, dtype=np.float64)
                count += len(block)
            mean = total / count
            var = squares / count - mean * mean
            std = torch.from_numpy(np.sqrt(np.maximum(var, 0)))
            self._mean, self._scale = torch.from_numpy(mean), std.clamp_min(1e-12)
            self._stats_ready = True
            return
        if x.device.type == "cpu":  # numpy reduces rows of a C-ordered array 2-3x faster than torch
            a = x.numpy()
            mean = a.mean(0, dtype=np.float64)
            var = np.einsum("ij,ij->j", a, a, dtype=np.float64) / len(a) - mean * mean
            mean, std = torch.from_numpy(mean), torch.from_numpy(np.sqrt(np.maximum(var, 0)))
        else:
            std, mean = torch.std_mean(x.to(torch.float64), dim=0, correction=0)
        self._mean = mean.to(self.device)
        self._scale = std.to(self.device).clamp_min(1e-12)
        self._stats_ready = True

    def _standardized(self, rows: np.ndarray) -> torch.Tensor:
        return (self._gather(rows).to(torch.float64) - self._mean) / self._scale

    # ------------------------------------------------------------------ fit
    def fit(self, rows: np.ndarray, y: np.ndarray) -> "LinearLearner":
        rows, y = fit_arguments(rows, y, self.num_classes)
        if not self._stats_ready:
            self._set_stats(None if self.streamed else self.features)
        classes = np.unique(y)
        self.classes_ = classes
        if len(classes) == 1:
            self.coef_ = torch.zeros((self.dim, 0), dtype=torch.float64, device=self.device)
            self.intercept_ = torch.zeros(0, dtype=torch.float64, device=self.device)
            self.training_ = {"steps": 0, "loss_initial": 0.0, "loss_final": 0.0, "stopped_by": "one_class"}
            self._state = None
            return self
        binary = len(classes) == 2
        target = torch.as_tensor(np.searchsorted(classes, y), device=self.device)
        if binary:
            target = target.to(torch.float64)
        width = 1 if binary else len(classes)
        solver = self._solver(len(rows), len(classes))
        state = self._state
        extends = (state is not None and state["solver"] == solver and np.array_equal(state["classes"], classes)
                   and len(state["rows"]) <= len(rows) and np.array_equal(state["rows"], rows[:len(state["rows"])]))
        previous = state if extends and self.warm_start else None
        with _one_thread(self.device) if solver == "newton" else contextlib.nullcontext():
            # standardised features of the labelled rows; only rows added since the last fit are read
            buffer = _append_rows(state["buffer"] if extends else None, len(state["rows"]) if extends else 0,
                                  self._standardized(rows[len(state["rows"]):] if extends else rows))
            x = buffer[:len(rows)]
            fit = _fit_newton if solver == "newton" else _fit_lbfgs
            weights, bias, solver_state, facts = fit(x, target, binary, width, self.config, previous)
            # fold standardisation into the head: logits = raw @ coef + intercept
            self.coef_ = weights / self._scale[:, None]
            self.intercept_ = bias - (self._mean / self._scale) @ weights
        self._state = {**solver_state, "solver": solver, "classes": classes, "rows": rows, "labels": y,
                       "buffer": buffer}
        self._head = _softmax_head(self.coef_, self.intercept_)
        self.training_ = facts
        return self

    def _solver(self, n_rows: int, n_classes: int) -> str:
        width = 1 if n_classes == 2 else n_classes
        if self.config.solver != "auto":
            return self.config.solver
        return "newton" if n_rows * width <= _NEWTON_MAX_VARIABLES else "lbfgs"

    def fits_on_one_thread(self, y: np.ndarray) -> bool:
        """Whether `fit` on rows labelled `y` runs on one CPU thread throughout (the Newton solver does), so
        several learners can fit side by side on threads and each give the bits it gives alone."""
        classes = len(np.unique(y))
        return self.device.type == "cpu" and (classes < 2 or self._solver(len(y), classes) == "newton")

    @property
    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """(W [D, C'], b [C']) float32 over the fitted classes (`classes_`), on raw features: what
        `embedcache.kernels.score_topk` takes. Needs a fit on at least two classes."""
        return self._head

    # ------------------------------------------------------------------ predict: through embedcache.kernels
    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """`[n, num_classes]` probabilities (float32); classes absent from the labelled set get 0."""
        return self._head_outputs(rows, proba=True)

    def predict_logits(self, rows: np.ndarray) -> np.ndarray:
        """`[n, num_classes]` float32 logits of the softmax head the scorer ranks with (a binary head's are
        [0, z]); classes absent from the labelled set get -inf (probability 0)."""
        return self._head_outputs(rows, proba=False)

    def _head_outputs(self, rows: np.ndarray, proba: bool) -> np.ndarray:
        from embedcache.kernels import predict_logits, predict_proba

        rows = np.asarray(rows, dtype=np.int64)
        full = np.full((len(rows), self.num_classes), 0.0 if proba else -np.inf, dtype=np.float32)
        if len(self.classes_) == 1:
            full[:, self.classes_[0]] = 1.0 if proba else 0.0
            return full
        predict = predict_proba if proba else predict_logits
        prepared = next((x for r, x in self._eval.values() if len(r) == len(rows) and np.array_equal(r, rows)), None)
        if prepared is not None:  # a row's outputs do not depend on the rows scored with it
            full[:, self.classes_] = predict(prepared, *self._head)
        else:
            full[:, self.classes_] = predict(self.features, *self._head, rows=rows)
        return full

    def embed(self, rows: np.ndarray) -> np.ndarray:
        """`[n, D]` float32: the vectors the head reads, standardised with the statistics `fit` uses (the
        pool's given to `prepare`, else all rows'; as they are without `standardize`)."""
        if not self._stats_ready:
            self._set_stats(None if self.streamed else self.features)
        return self._standardized(np.ascontiguousarray(rows, dtype=np.int64)).to(torch.float32).cpu().numpy()

    def gradient_embedding(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BADGE's gradient of the loss at the predicted class, factorised: (p - onehot(argmax p) `[n, C]`,
        [embed(rows), 1] `[n, D + 1]`); their outer product per row is the gradient for weights and bias."""
        rows = np.asarray(rows, dtype=np.int64)
        residual = self.predict_proba(rows)
        residual[np.arange(len(rows)), residual.argmax(axis=1)] -= 1.0
        inputs = np.ones((len(rows), self.dim + 1), dtype=np.float32)
        inputs[:, :-1] = self.embed(rows)
        return residual, inputs

    def scores_pool_densely(self, candidates: np.ndarray) -> bool:
        """Whether `top_k` ranks these candidates by scoring the whole prepared pool with the other rows
        excluded (most of the pool are candidates), as the batched engine does for many heads at once."""
        return (self._pool is not None and 2 * len(candidates) >= len(self._pool[0])
                and bool((self._pool[1][candidates] >= 0).all()))

    def dense_scoring(self, candidates: np.ndarray) -> tuple[object, np.ndarray | None, np.ndarray, np.ndarray | None,
                                                             np.ndarray | None]:
        """What ranking `candidates` over the whole prepared pool reads (`scores_pool_densely`): (X, the
        rows of X to score or None for all, the mask of rows of X never to pick, the tie keys of X's rows or
        None, the table row of each row of X or None when they are the table's). In memory X is the pool
        block, streamed the cache."""
        rows, position, block = self._pool
        if self.streamed:  # the whole table read in order (contiguous reads) when the pool is most of it
            exclude = np.ones(self.n_rows, dtype=bool)
            exclude[candidates] = False
            return block, None if 2 * len(rows) >= self.n_rows else rows, exclude, None, None
        exclude = np.ones(len(rows), dtype=bool)
        exclude[position[candidates]] = False
        return block, None, exclude, rows, rows

    def posterior_proba(self, rows: np.ndarray, n_samples: int, seed: int, method: str = "auto") -> np.ndarray:
        """`[n_samples, n, num_classes]` float32 class probabilities of `rows` under posterior draws of the head
        (`embedcache.learners.posterior`): the Laplace approximation of the fitted objective (method
        "laplace"), or heads refitted on stratified bootstrap resamples of the labelled rows ("bootstrap");
        "auto" is Laplace while its (n·C')² system is small enough. The same seed gives the same draws for
        every set of rows (they are drawn once per fit and seed)."""
        if method not in ("auto", "laplace", "bootstrap"):
            raise ConfigError(f"must be auto, laplace or bootstrap, got {method!r}", param="method")
        rows = np.asarray(rows, dtype=np.int64)
        full = np.zeros((n_samples, len(rows), self.num_classes), dtype=np.float32)
        if len(self.classes_) == 1:
            full[:, :, self.classes_[0]] = 1.0
            return full
        samples = self._posterior_heads(int(n_samples), int(seed), method)
        raw = self._gather(rows).cpu().numpy()
        full[:, :, self.classes_] = samples.proba(raw).transpose(1, 0, 2)
        return full

    def _posterior_heads(self, n_samples: int, seed: int, method: str):
        """The head samples of the last fit, on raw features (kept for the next call with the same arguments)."""
        from embedcache.learners.posterior import bootstrap_samples, laplace_samples

        key = (n_samples, seed, method)
        cached = self._posterior
        if cached is not None and cached[0] is self._state and cached[1] == key:
            return cached[2]
        state = self._state
        x = state["buffer"][:len(state["rows"])].cpu().numpy()  # standardised features of the labelled rows
        weights = (self.coef_ * self._scale[:, None]).cpu().numpy()  # the head in the standardised space
        bias = (self.intercept_ + (self._mean / self._scale) @ (self.coef_ * self._scale[:, None])).cpu().numpy()
        if method == "auto":
            method = "laplace" if len(x) * weights.shape[1] <= _LAPLACE_MAX_VARIABLES else "bootstrap"
        if method == "laplace":
            samples = laplace_samples(x, weights, bias, self.config.C, n_samples, seed)
        else:
            labels = np.searchsorted(self.classes_, state["labels"])
            samples = bootstrap_samples(x, labels, lambda xs, ys: self._refit_head(xs, ys, (weights, bias)),
                                        n_samples, seed)
        samples = samples.folded(self._mean.cpu().numpy(), self._scale.cpu().numpy())
        self._posterior = (state, key, samples)
        return samples

    def _refit_head(self, x: np.ndarray, y: np.ndarray, start: tuple[np.ndarray, np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(W [D, C'], b [C']) on standardised features (a bootstrap member), by the solver `fit` would pick:
        Newton, or L-BFGS from the fitted head `start` (which a resample of the same rows moves little)."""
        binary = len(self.classes_) == 2
        width = 1 if binary else len(self.classes_)
        target = torch.as_tensor(y, device=self.device)
        target = target.to(torch.float64) if binary else target
        features = torch.as_tensor(x, dtype=torch.float64, device=self.device)
        if len(x) * width <= _NEWTON_MAX_VARIABLES:
            with _one_thread(self.device):
                weights, bias, _, _ = _fit_newton(features, target, binary, width, self.config, None)
        else:
            previous = {"weights": torch.as_tensor(start[0], device=self.device),
                        "bias": torch.as_tensor(start[1], device=self.device)}
            weights, bias, _, _ = _fit_lbfgs(features, target, binary, width, self.config, previous)
        return weights.cpu().numpy(), bias.cpu().numpy()

    def top_k(self, candidates: np.ndarray, strategy: str, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The acquisition's fused path: the pool ranked by `embedcache.kernels.score_topk` without
        materialising its probabilities; what scoring `predict_proba(candidates)` (`predict_logits` for a
        logit score) gives, up to ties."""
        from embedcache.kernels import score_topk

        candidates = np.asarray(candidates, dtype=np.int64)
        if len(self.classes_) == 1:  # every candidate is certain: the tie rule alone orders them
            if strategy in LOGIT_SCORES:
                return top_k(LOGIT_SCORES[strategy](self.predict_logits(candidates)), candidates, k, seed)
            return top_k(PROBABILITY_SCORES[strategy](self.predict_proba(candidates)), candidates, k, seed)
        if self.streamed and self.scores_pool_densely(candidates):  # the scoring the batched engine does, one head
            from embedcache.kernels import score_topk_many

            X, rows, exclude, _, _ = self.dense_scoring(candidates)
            return score_topk_many(X, [self._head], [strategy], [k], excludes=[exclude], seeds=[seed], rows=rows)[0]
        if not self.streamed and self._pool is not None and (self._pool[1][candidates] >= 0).all():
            # score the contiguous pool block, the others masked (no gather when most are candidates);
            # ties hash the rows' numbers in the whole table, as scoring it directly would
            rows, position, block = self._pool
            subset = position[candidates]
            dense = self.scores_pool_densely(candidates)
            exclude = None
            if dense:
                exclude = np.ones(len(rows), dtype=bool)
                exclude[subset] = False
            chosen, scores = score_topk(block, *self._head, strategy, k, rows=None if dense else subset,
                                        exclude=exclude, seed=seed, tie_keys=rows)
            return rows[chosen], scores
        return score_topk(self.features, *self._head, strategy, k, rows=candidates, seed=seed)


def _softmax_head(coef: torch.Tensor, intercept: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(W [D, C], b [C]) float32 for softmax scoring; a binary head σ(z) is the softmax of [0, z]."""
    if coef.shape[1] == 1:
        coef = torch.cat([torch.zeros_like(coef), coef], dim=1)
        intercept = torch.cat([torch.zeros_like(intercept), intercept])
    return coef.to(torch.float32).cpu().numpy(), intercept.to(torch.float32).cpu().numpy()


# ---------------------------------------------------------------------- solvers
def _loss_terms(logits: torch.Tensor, target: torch.Tensor, binary: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and the residual P - Y (shape of logits)."""
    if binary:  # target holds 0./1. floats
        z = logits[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, target, reduction="sum")
        return loss, (torch.sigmoid(z) - target)[:, None]
    loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    residual = torch.softmax(logits, dim=1)
    residual[torch.arange(len(target)), target] -= 1.0
    return loss, residual


def _fit_newton(x, target, binary, width, config, previous):
    """Newton in the representer space: W = x̃ᵀA with x̃ = [x, s], so logits = K̃A, K̃ = xxᵀ + s²."""
    n = len(x)
    if previous is not None and "gram" in previous and len(previous["gram"]) <= n:
        k_old = len(previous["gram"])
        cross = x[k_old:] @ x.T
        gram = torch.empty((n, n), dtype=x.dtype, device=x.device)
        gram[:k_old, :k_old] = previous["gram"]
        gram[k_old:, :] = cross
        gram[:k_old, k_old:] = cross[:, :k_old].T
        s2 = previous["s2"]
        dual = torch.zeros((n, width), dtype=x.dtype, device=x.device)
        dual[:k_old] = previous["dual"]
    else:
        gram = x @ x.T
        s2 = _INTERCEPT_SCALE2 * max(1.0, float(gram.diagonal().mean()))
        dual = torch.zeros((n, width), dtype=x.dtype, device=x.device)
    kernel = gram + s2
    C = config.C

    def objective(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = kernel @ a
        ce, residual = _loss_terms(logits, target, binary)
        return C * ce + 0.5 * (a * logits).sum(), logits, residual

    def factorise(logits: torch.Tensor):
        """A solver for the Newton system (I + C H K) step = -g at these logits."""
        if binary:
            # symmetric form: (I + C S K)⁻¹ = I - C S½ B⁻¹ S½ K with B = I + C S½ K S½ (SPD: Cholesky)
            p = torch.sigmoid(logits[:, 0])
            root = torch.sqrt(p * (1 - p))[:, None]
            system = C * (root * kernel * root.T)
            system.diagonal().add_(1.0)
            factor = torch.linalg.cholesky(system)
            return lambda g, kg: -g + C * root * torch.cholesky_solve(root * kg, factor)
        p = torch.softmax(logits, dim=1)
        # H_j = diag(p_j) - p_j p_jᵀ, one C×C block per row j; M[(j,c),(i,d)] = δ + C H_j[c,d] K[j,i]
        hess = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        system = C * torch.einsum("jcd,ji->jcid", hess, kernel).reshape(n * width, n * width)
        system.diagonal().add_(1.0)
        lu, pivots = torch.linalg.lu_factor(system)
        return lambda g, kg: torch.linalg.lu_solve(lu, pivots, -g.reshape(-1, 1)).reshape(n, width)

    loss, logits, residual = objective(dual)
    first, steps, stopped_by = float(loss), 0, "max_iter"
    solve, last_decrement, stale = None, None, 0
    for steps in range(1, config.max_iter + 1):
        gradient_dual = C * residual + dual
        kg = kernel @ gradient_dual  # the gradient in A
        # The Hessian is refactorised when progress slows or after two steps: a stale factor still
        # gives a descent direction ((K⁻¹ + C H_old)⁻¹ is positive definite) for two triangular solves.
        fresh = solve is None
        step = solve(gradient_dual, kg) if solve is not None else None
        decrement = None if step is None else float(-(kg * step).sum())
        if (step is None or decrement <= 0 or stale >= _MAX_STALE_STEPS
                or (last_decrement is not None and decrement > 0.1 * last_decrement)):
            solve, fresh, stale = factorise(logits), True, 0
            step = solve(gradient_dual, kg)
            decrement = float(-(kg * step).sum())
        if decrement / 2 <= config.tol * (1 + abs(float(loss))) and fresh:
            stopped_by = "converged"
            break
        t = 1.0
        while True:  # backtracking (Armijo) line search
            candidate = dual + t * step
            new_loss, new_logits, new_residual = objective(candidate)
            if float(new_loss) <= float(loss) - 0.25 * t * decrement or t < 1e-10:
                break
            t *= 0.5
        dual, loss, logits, residual, last_decrement = candidate, new_loss, new_logits, new_residual, decrement
        stale += 1
    weights = x.T @ dual
    bias = s2 * dual.sum(0)
    state = {"dual": dual, "gram": gram, "s2": s2}
    facts = {"steps": steps, "loss_initial": first, "loss_final": float(loss), "stopped_by": stopped_by}
    return weights, bias, state, facts


def _fit_lbfgs(x, target, binary, width, config, previous):
    """Primal full-batch L-BFGS on (W, b), b unpenalised."""
    if previous is not None:
        weights, bias = previous["weights"].clone(), previous["bias"].clone()
    else:
        weights = torch.zeros((x.shape[1], width), dtype=x.dtype, device=x.device)
        bias = torch.zeros(width, dtype=x.dtype, device=x.device)
    weights.requires_grad_(True)
    bias.requires_grad_(True)
    max_iter = config.max_iter * 10  # L-BFGS steps are cheaper and more numerous than Newton's
    optimizer = torch.optim.LBFGS([weights, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=0, line_search_fn="strong_wolfe")
    evaluations = []

    def closure():
        optimizer.zero_grad()
        ce, _ = _loss_terms(x @ weights + bias, target, binary)
        loss = config.C * ce + 0.5 * (weights * weights).sum()
        loss.backward()
        evaluations.append(float(loss.detach()))
        return loss

    optimizer.step(closure)
    steps = int(optimizer.state[weights].get("n_iter", 0))
    weights, bias = weights.detach(), bias.detach()
    facts = {"steps": steps, "loss_initial": evaluations[0], "loss_final": evaluations[-1],
             "stopped_by": "max_iter" if steps >= max_iter else "converged"}
    return weights, bias, {"weights": weights, "bias": bias}, facts
