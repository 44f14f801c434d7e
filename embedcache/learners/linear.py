"""Linear mode: an L2-regularised logistic-regression head on cached embeddings.

The objective is scikit-learn's `LogisticRegression(C=C)`: `C · Σ_i CE_i + ½‖W‖²`, intercept
unpenalised, fitted on the classes present in the labelled set (binary logistic for two classes,
multinomial softmax for more). Probabilities of absent classes are 0.

Solvers (torch, CPU or CUDA, float64):
* "newton": Newton's method in the representer space. With few labelled points n and wide
  features D (AL's regime: n ≤ a few hundred, D = 2048) the weights are `W = Xᵀ A`, and each
  step solves an (n·C')×(n·C') system (C' = 1 for binary, C for multinomial) instead of touching
  a D×D Hessian; 3-6 steps converge to machine precision. The intercept is an extra constant
  feature of large scale, so its penalty is below 1e-8 of the loss.
* "lbfgs": primal full-batch L-BFGS, for large n·C (iWildCam's 182 classes).
"auto" picks newton when n·C' ≤ 2048.

Warm start: when the labelled rows extend the previous fit's rows (the AL loop appends
acquisitions), the dual variables (or weights) of the last fit are the starting point, and the
Gram matrix is extended rather than recomputed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from embedcache.errors import ConfigError

SOLVERS = ("auto", "newton", "lbfgs")
_NEWTON_MAX_VARIABLES = 2048
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
            raise ConfigError(f"--solver must be one of {SOLVERS}, got {self.solver!r}")
        if not self.C > 0:
            raise ConfigError(f"--C must be positive, got {self.C}")


class LinearLearner:
    """Logistic regression on rows of a feature matrix: `fit(rows, y)` / `predict_proba(rows)`.

    `features` is the whole cache's `[N, D]` matrix; rows are indices into it. After `fit`,
    `coef_` `[D, C']` and `intercept_` `[C']` act on raw (unstandardised) features, `classes_`
    lists the classes fitted, and `training_` holds the facts the run records keep.
    """

    def __init__(self, features: np.ndarray | torch.Tensor, num_classes: int, config: LinearConfig | None = None):
        self.config = config or LinearConfig()
        self.num_classes = int(num_classes)
        self.device = torch.device(self.config.device)
        self.features = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
        self.features = self.features.to(self.device, torch.float32)
        self._mean = torch.zeros(self.features.shape[1], dtype=torch.float64, device=self.device)
        self._scale = torch.ones_like(self._mean)
        self._stats_ready = not self.config.standardize
        self._blocks: dict[str, tuple[np.ndarray, torch.Tensor]] = {}
        self._state: dict | None = None  # warm-start state of the last fit
        self.warm_start = self.config.warm_start

    # ------------------------------------------------------------------ loop hooks
    def describe(self) -> dict:
        return {"learner": "linear", **dataclasses.asdict(self.config)}

    def prepare(self, pool: np.ndarray, evaluation: dict[str, np.ndarray]) -> None:
        """Called once by the loop: standardisation statistics from the pool, and contiguous copies
        of the pool and evaluation rows so every round reads them without gathering."""
        if self.config.standardize:
            self._set_stats(self.features[torch.as_tensor(pool, device=self.device)])
        for name, rows in {"pool": pool, **{f"eval:{k}": v for k, v in evaluation.items()}}.items():
            rows = np.asarray(rows, dtype=np.int64)
            self._blocks[name] = (rows, self.features[torch.as_tensor(rows, device=self.device)])

    def _set_stats(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)
        self._mean = x.mean(0)
        self._scale = x.std(0, unbiased=False).clamp_min(1e-12)
        self._stats_ready = True

    def _rows_features(self, rows: np.ndarray) -> torch.Tensor:
        """Features of `rows` (float32), from a prepared contiguous block when they are one."""
        for block_rows, block in self._blocks.values():
            if len(block_rows) == len(rows) and np.array_equal(block_rows, rows):
                return block
        return self.features[torch.as_tensor(rows, device=self.device)]

    # ------------------------------------------------------------------ fit
    def fit(self, rows: np.ndarray, y: np.ndarray) -> "LinearLearner":
        rows = np.asarray(rows, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        if len(rows) != len(y) or not len(rows):
            raise ConfigError(f"fit needs as many labels as rows (got {len(rows)} rows, {len(y)} labels)")
        if y.min() < 0 or y.max() >= self.num_classes:
            raise ConfigError(f"labels must be in 0..{self.num_classes - 1}")
        if not self._stats_ready:
            self._set_stats(self.features)
        classes = np.unique(y)
        self.classes_ = classes
        if len(classes) == 1:
            self.coef_ = torch.zeros((self.features.shape[1], 0), dtype=torch.float64, device=self.device)
            self.intercept_ = torch.zeros(0, dtype=torch.float64, device=self.device)
            self.training_ = {"steps": 0, "loss_initial": 0.0, "loss_final": 0.0, "stopped_by": "one_class"}
            self._state = None
            return self
        binary = len(classes) == 2
        target = torch.as_tensor(np.searchsorted(classes, y), device=self.device)
        x = (self._rows_features(rows).to(torch.float64) - self._mean) / self._scale
        width = 1 if binary else len(classes)
        solver = self.config.solver
        if solver == "auto":
            solver = "newton" if len(rows) * width <= _NEWTON_MAX_VARIABLES else "lbfgs"
        previous = self._state if (self.warm_start and self._state and self._state["solver"] == solver
                                   and np.array_equal(self._state["classes"], classes)
                                   and len(self._state["rows"]) <= len(rows)
                                   and np.array_equal(self._state["rows"], rows[:len(self._state["rows"])])) else None
        fit = _fit_newton if solver == "newton" else _fit_lbfgs
        weights, bias, state, facts = fit(x, target, binary, width, self.config, previous)
        self._state = {**state, "solver": solver, "classes": classes, "rows": rows}
        # fold standardisation into the head: logits = raw @ coef + intercept
        self.coef_ = weights / self._scale[:, None]
        self.intercept_ = bias - (self._mean / self._scale) @ weights
        self.training_ = facts
        return self

    # ------------------------------------------------------------------ predict
    def decision_function(self, rows: np.ndarray) -> torch.Tensor:
        """Logits of the fitted classes for `rows` (binary: one column, the second class's logit)."""
        x = self._rows_features(np.asarray(rows, dtype=np.int64))
        return x @ self.coef_.to(torch.float32) + self.intercept_.to(torch.float32)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """`[n, num_classes]` probabilities (float32); classes absent from the labelled set get 0."""
        rows = np.asarray(rows, dtype=np.int64)
        full = np.zeros((len(rows), self.num_classes), dtype=np.float32)
        if len(self.classes_) == 1:
            full[:, self.classes_[0]] = 1.0
            return full
        logits = self.decision_function(rows)
        if len(self.classes_) == 2:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        full[:, self.classes_] = torch.softmax(logits, dim=1).cpu().numpy()
        return full


# ---------------------------------------------------------------------- solvers
def _loss_terms(logits: torch.Tensor, target: torch.Tensor, binary: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and the residual P - Y (shape of logits)."""
    if binary:
        z = logits[:, 0]
        t = target.to(z.dtype)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, t, reduction="sum")
        return loss, (torch.sigmoid(z) - t)[:, None]
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
    eye = torch.eye(n * width, dtype=x.dtype, device=x.device)
    C = config.C

    def objective(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = kernel @ a
        ce, residual = _loss_terms(logits, target, binary)
        return C * ce + 0.5 * (a * logits).sum(), logits, residual

    loss, logits, residual = objective(dual)
    first, steps, stopped_by = float(loss), 0, "max_iter"
    for steps in range(1, config.max_iter + 1):
        if binary:
            p = torch.sigmoid(logits[:, 0])
            system = eye + C * (p * (1 - p))[:, None] * kernel
        else:
            p = torch.softmax(logits, dim=1)
            # H_j = diag(p_j) - p_j p_jᵀ, one C×C block per row j; M[(j,c),(i,d)] = δ + C H_j[c,d] K[j,i]
            hess = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
            system = eye + C * torch.einsum("jcd,ji->jcid", hess, kernel).reshape(n * width, n * width)
        gradient_dual = C * residual + dual
        step = torch.linalg.solve(system, -gradient_dual.reshape(-1)).reshape(n, width)
        decrement = float(-(kernel @ gradient_dual * step).sum())
        if decrement / 2 <= config.tol * (1 + abs(float(loss))):
            stopped_by = "converged"
            break
        t = 1.0
        while True:  # backtracking (Armijo) line search
            candidate = dual + t * step
            new_loss, new_logits, new_residual = objective(candidate)
            if float(new_loss) <= float(loss) - 0.25 * t * decrement or t < 1e-10:
                break
            t *= 0.5
        dual, loss, logits, residual = candidate, new_loss, new_logits, new_residual
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
