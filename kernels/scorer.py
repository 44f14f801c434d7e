"""`score_topk` and `predict_proba`: one entry point that picks the backend from where the data lives.

CuPy arrays and torch CUDA tensors are scored on the GPU (when CuPy sees a device), numpy arrays,
torch CPU tensors and caches on the CPU unless backend="cuda" asks for the GPU. Both backends
agree up to ties (the determinism contract: kernels/README.md).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import numpy as np

from embedcache.errors import ConfigError
from embedcache.kernels import cpu
from embedcache.pool import Pool, as_pool, check_exclude, check_rows, cuda_status
from embedcache.scoring import UNCERTAINTY_SCORES

BACKENDS = ("auto", "cpu", "cuda")


def resolve_backend(backend: str, pool: Pool) -> str:
    """"cpu" or "cuda" for `backend` and the pool's location; ConfigError if the GPU is asked for but absent."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend == "cpu":
        return "cpu"
    cupy, why = cuda_status()
    if backend == "cuda" and cupy is None:
        raise ConfigError(f"backend='cuda' needs CuPy and a CUDA GPU: {why}")
    return "cuda" if cupy is not None and (backend == "cuda" or pool.location == "gpu") else "cpu"


def _positive(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def score_topk(
    X: Any,
    W: Any,
    b: Any,
    strategy: str,
    k: int,
    *,
    rows: Any = None,
    exclude: Any = None,
    seed: int = 0,
    chunk_rows: int | None = None,
    backend: str = "auto",
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    tie_keys: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of X whose linear-head predictions are most uncertain, best first.

    X [N, D] (float16/float32; numpy, torch, CuPy, or an `EmbeddingCache`, streamed in chunks),
    W [D, C], b [C]; `strategy` one of `scoring.UNCERTAINTY_SCORES`; `rows` the candidate row indices (default:
    all); `exclude` a boolean mask [N] of rows never to pick. Ties are ordered by
    `scoring.tie_priority(row, seed)`. Returns (row indices into X as int64, float32 scores):
    `top_k(score(predict_proba(X, W, b, rows)), rows, k, seed)` up to ties, for every backend and
    chunk size, and bit for bit for the same arguments on one machine (the determinism contract,
    kernels/README.md). `threads` (CPU, default: all cores) and `chunk_rows` tune speed and memory.
    `tie_keys` [N] (unique integers) replaces the row index in the tie rule when X is a block of a
    larger table: pass the rows' numbers in that table so ties break as scoring the table would.
    """
    if strategy not in UNCERTAINTY_SCORES:
        raise ConfigError(f"unknown strategy {strategy!r}; the scorer knows {list(UNCERTAINTY_SCORES)}")
    k = _positive(k, "k")
    if k is None:
        raise ConfigError("k must be a positive integer, got None")
    chunk_rows = _positive(chunk_rows, "chunk_rows")
    threads = _positive(threads, "threads") or cpu.default_threads()
    pool = as_pool(X)
    head = cpu.LinearHead.from_arrays(W, b, pool.dim)
    rows = check_rows(rows, pool.n_rows)
    exclude = check_exclude(exclude, pool.n_rows)
    if tie_keys is not None:
        tie_keys = np.asarray(tie_keys)
        if tie_keys.shape != (pool.n_rows,) or tie_keys.dtype.kind not in "iu":
            raise ConfigError(f"tie_keys must be {pool.n_rows} integers, one per row of X; got {tie_keys.shape} "
                              f"{tie_keys.dtype}")
        tie_keys = tie_keys.astype(np.int64)
    if rows is not None:
        rows = np.sort(rows if exclude is None else rows[~exclude[rows]])  # order is irrelevant to a top-k
        exclude = None
    if resolve_backend(backend, pool) == "cuda":
        from embedcache.kernels import cuda

        return cuda.score_topk(pool, head, strategy, k, rows, exclude, int(seed), chunk_rows, progress, tie_keys)
    candidates = pool.n_rows if rows is None else len(rows)
    chunk_rows = chunk_rows or cpu.default_chunk_rows(pool.dim, pool.dtype.itemsize, candidates, threads)
    return cpu.score_topk(pool, head, strategy, k, rows, exclude, int(seed), chunk_rows, threads, progress,
                          tie_keys)


def _predict(X, W, b, rows, chunk_rows, threads, proba: bool) -> np.ndarray:
    pool = as_pool(X)
    head = cpu.LinearHead.from_arrays(W, b, pool.dim)
    threads = _positive(threads, "threads") or cpu.default_threads()
    rows = check_rows(rows, pool.n_rows)
    chunk_rows = _positive(chunk_rows, "chunk_rows") or cpu.default_chunk_rows(
        pool.dim, pool.dtype.itemsize, pool.n_rows if rows is None else len(rows), threads)
    return cpu.predict(pool, head, rows, chunk_rows, threads, proba)


def predict_proba(X: Any, W: Any, b: Any, rows: Any = None, chunk_rows: int | None = None,
                  threads: int | None = None) -> np.ndarray:
    """Class probabilities softmax(X[rows] @ W + b), float32 [n, C], rows in the order given.

    The scorer's own arithmetic (on the CPU, whatever the input), so the acquisition formulas on
    this output give `score_topk`'s scores (up to the contract's tolerance when the rows are
    chunked differently). The array is column-major.
    """
    return _predict(X, W, b, rows, chunk_rows, threads, proba=True)


def predict_logits(X: Any, W: Any, b: Any, rows: Any = None, chunk_rows: int | None = None,
                   threads: int | None = None) -> np.ndarray:
    """Logits X[rows] @ W + b, float32 [n, C], with the arithmetic of `predict_proba`."""
    return _predict(X, W, b, rows, chunk_rows, threads, proba=False)


def _heads(heads: Sequence[tuple[Any, Any]], dim: int, stack: bool) -> cpu.Heads:
    if not heads:
        raise ConfigError("heads must name at least one (W, b) pair")
    return cpu.Heads(tuple(cpu.LinearHead.from_arrays(W, b, dim) for W, b in heads), bool(stack))


def score_topk_many(X: Any, heads: Sequence[tuple[Any, Any]], strategies: Sequence[str], ks: Sequence[int], *,
                    excludes: Sequence[Any] | None = None, seeds: Sequence[int] | None = None, rows: Any = None,
                    chunk_rows: int | None = None, threads: int | None = None, tie_keys: Any = None,
                    stack: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """`score_topk` for several heads (W, b) at once, reading X once, chunk by chunk (CPU). Head i is
    ranked with `strategies[i]`, `ks[i]`, `excludes[i]` and `seeds[i]`. Each head's product is its own
    by default, and its result is `score_topk(X, *heads[i], ..., exclude=excludes[i])`'s bit for bit
    (same chunks, same calls); with `stack` the heads' columns form one product per chunk (faster for
    many heads) and results agree with `score_topk`'s up to ties (the determinism contract,
    kernels/README.md)."""
    count = len(heads)
    excludes = list(excludes) if excludes is not None else [None] * count
    seeds = [int(s) for s in seeds] if seeds is not None else [0] * count
    if not len(strategies) == len(ks) == len(excludes) == len(seeds) == count:
        raise ConfigError(f"{count} heads need as many strategies, ks, excludes and seeds")
    for strategy in strategies:
        if strategy not in UNCERTAINTY_SCORES:
            raise ConfigError(f"unknown strategy {strategy!r}; the scorer knows {list(UNCERTAINTY_SCORES)}")
    ks = [_positive(k, "k") for k in ks]
    if None in ks:
        raise ConfigError("k must be a positive integer, got None")
    threads = _positive(threads, "threads") or cpu.default_threads()
    pool = as_pool(X)
    stacked = _heads(heads, pool.dim, stack)
    rows = check_rows(rows, pool.n_rows)
    excludes = [check_exclude(e, pool.n_rows) for e in excludes]
    if rows is not None:
        rows = np.sort(rows)
    if tie_keys is not None:
        tie_keys = np.asarray(tie_keys, dtype=np.int64)
        if tie_keys.shape != (pool.n_rows,):
            raise ConfigError(f"tie_keys must be {pool.n_rows} integers, one per row of X; got {tie_keys.shape}")
    chunk_rows = _positive(chunk_rows, "chunk_rows") or cpu.default_chunk_rows(
        pool.dim, pool.dtype.itemsize, pool.n_rows if rows is None else len(rows), threads)
    return cpu.score_topk_many(pool, stacked, list(strategies), ks, excludes, seeds, rows, chunk_rows, threads,
                               tie_keys)


def predict_many(X: Any, heads: Sequence[tuple[Any, Any]], rows: Any = None, proba: bool = True,
                 chunk_rows: int | None = None, threads: int | None = None, stack: bool = False) -> list[np.ndarray]:
    """`predict_proba` (or, with proba=False, `predict_logits`) for several heads at once, reading X
    once: each [n, C] result is the single head's bit for bit, or with `stack` (see `score_topk_many`)
    within the contract's tolerance."""
    pool = as_pool(X)
    stacked = _heads(heads, pool.dim, stack)
    threads = _positive(threads, "threads") or cpu.default_threads()
    rows = check_rows(rows, pool.n_rows)
    chunk_rows = _positive(chunk_rows, "chunk_rows") or cpu.default_chunk_rows(
        pool.dim, pool.dtype.itemsize, pool.n_rows if rows is None else len(rows), threads)
    return cpu.predict_many(pool, stacked, rows, chunk_rows, threads, proba)
