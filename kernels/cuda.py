"""The GPU path: CuPy kernels score every row, the CPU settles the rows near the top-k.

Per chunk (one chunk on the device at a time), `gpu_scores` runs the fused kernel of `scores.cu`
(C <= 32: logits, softmax, score and mask in one pass over X) or a cuBLAS GEMM followed by a fused
softmax/score/mask kernel (larger C), and returns float32 scores with a bound on how far each can
be from the CPU's score of that row. GPU and CPU round differently in the last bits, so equal
indices cannot come from porting the arithmetic; instead the bound decides which rows could still
make the top-k (their score plus bound reaches the k-th best lower bound), those few rows are
rescored on the CPU with the reference arithmetic (`cpu.chunk_scores`), and `acquisition.top_k`
orders them. Indices, scores and tie order are therefore exactly the CPU backend's.

The bound (per row, `A * ||x|| + B`) is a worst-case one: float32 dot products of length n are off
by at most gamma_n * sum|x_d w_dc| <= gamma_n * ||x|| * ||w_c|| whatever the summation order, for
the GPU (n = D/32 + 6 in the fused kernel, D plus TF32 input rounding for cuBLAS) and the CPU
(n = D + 1); the score moves by at most a Lipschitz constant times the logit change (1/2 for
least-confidence, 1 for margin and max-logit, sqrt(0.55 C) for entropy) plus the float32 rounding
of the softmax and formula on each side; everything is then doubled. A loose bound only costs
more CPU rescoring, never a wrong answer.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from embedcache.acquisition import top_k
from embedcache.kernels.cpu import LinearHead, chunk_scores, non_finite, single_threaded_blas
from embedcache.kernels.pool import Pool, to_gpu, to_host

SOURCE = Path(__file__).with_name("scores.cu")
CODES = {"least-confidence": 0, "entropy": 1, "margin": 2, "max-logit": 3}
#: Heads with at most this many classes use the one-pass fused kernel; wider ones a GEMM first.
FUSED_MAX_CLASSES = 32
_THREADS = 256  # WARPS_PER_BLOCK (8) warps in scores.cu
_CHUNK_BYTES = 1 << 28
_U32 = 2.0**-24


def _gamma(n: int) -> float:
    return n * _U32 / (1 - n * _U32)


@functools.lru_cache(maxsize=None)
def _function(name: str):
    """A kernel of scores.cu, compiled on first use (CuPy also caches the binary on disk)."""
    import cupy

    expressions = [name] if "<" in name else []
    module = cupy.RawModule(code=SOURCE.read_text(), options=("--std=c++14",), name_expressions=expressions)
    return module.get_function(name)


def _launch(name: str, rows: int, args: tuple) -> None:
    blocks = max(1, min(-(-rows // (_THREADS // 32)), 1 << 16))
    _function(name)((blocks,), (_THREADS,), args)


def _ctype(x) -> str:
    return "unsigned short" if x.dtype == np.float16 else "float"


def error_bound(head: LinearHead, strategy: str, dim: int) -> tuple[float, float]:
    """(A, B): |GPU score - CPU score| <= A * ||x|| + B for every row x (see the module docstring)."""
    c = head.num_classes
    omega = float(np.sqrt((head.weight.astype(np.float64) ** 2).sum(axis=0)).max())
    beta = float(np.abs(head.bias).max())
    if c <= FUSED_MAX_CLASSES:
        gpu = _gamma(-(-dim // 32) + 6)
    else:
        tf32 = int(os.environ.get("CUPY_TF32", "0")) > 0
        gpu = _gamma(dim + 1) + (2.01 * 2.0**-11 if tf32 else 0.0)
    gamma = gpu + _gamma(dim + 1)
    lipschitz = {"least-confidence": 0.5, "margin": 1.0, "max-logit": 1.0}.get(strategy, max(1.0, math.sqrt(0.55 * c)))
    rounding = 8 * (c + 8) * _U32 * {"least-confidence": 0.5, "margin": 1.0, "max-logit": 0.0}.get(
        strategy, math.log(c) + 1)
    return 2 * lipschitz * gamma * omega, 2 * (lipschitz * gamma * beta + 2 * rounding)


def gpu_scores(x, head: LinearHead, weight, bias, strategy: str, excluded) -> tuple[Any, Any]:
    """float32 scores (-inf where `excluded`) and row norms of a [m, D] CuPy block."""
    import cupy

    m, d = x.shape
    if x.dtype not in (np.float16, np.float32):
        x = x.astype(cupy.float32)
    x = cupy.ascontiguousarray(x)
    score = cupy.empty(m, dtype=cupy.float32)
    norm = cupy.empty(m, dtype=cupy.float32)
    n, dim, code = np.int64(m), np.int32(d), np.int32(CODES[strategy])
    if head.num_classes <= FUSED_MAX_CLASSES:
        _launch(f"fused_scores<{_ctype(x)}, {head.num_classes}>", m,
                (x, n, dim, weight, bias, excluded, code, score, norm))
    else:
        logits = cupy.ascontiguousarray(cupy.matmul(x, weight), dtype=cupy.float32)
        _launch("logit_scores", m, (logits, n, np.int32(head.num_classes), bias, excluded, code, score))
        _launch(f"row_norms<{_ctype(x)}>", m, (x, n, dim, norm))
    return score, norm


def score_topk(pool: Pool, head: LinearHead, strategy: str, k: int, rows: np.ndarray | None,
               exclude: np.ndarray | None, seed: int, chunk_rows: int | None,
               progress: Callable[[int, int], None] | None,
               keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The GPU scorer; returns exactly what `cpu.score_topk` returns (see the module docstring)."""
    import cupy

    device = pool.data.device if pool.location == "gpu" and hasattr(pool.data, "device") else cupy.cuda.Device()
    chunk_rows = chunk_rows or max(1, _CHUNK_BYTES // (pool.dim * pool.dtype.itemsize))
    a_coef, b_coef = error_bound(head, strategy, pool.dim)
    total = pool.n_rows if rows is None else len(rows)
    best_rows, best_scores = np.empty(0, np.int64), np.empty(0, np.float32)
    done = 0
    with device, single_threaded_blas():
        weight, bias = cupy.asarray(head.weight), cupy.asarray(head.bias)
        for index, block in pool.chunks(rows, chunk_rows):
            x = to_gpu(block)
            m = len(index)
            mask = np.zeros(m, dtype=bool) if exclude is None else exclude[index]
            excluded = cupy.asarray(mask.view(np.uint8))
            score, norm = gpu_scores(x, head, weight, bias, strategy, excluded)
            valid = ~cupy.asarray(mask)
            approx = score.astype(cupy.float64)
            slack = a_coef * norm.astype(cupy.float64) + b_coef
            bad = valid & ~(cupy.isfinite(approx) & cupy.isfinite(slack))
            if bool(bad.any()):
                raise non_finite(index[to_host(bad)])
            lower = cupy.where(valid, approx - slack, -cupy.inf)
            threshold = float(cupy.partition(lower, m - k)[m - k]) if m >= k else -math.inf
            if len(best_rows) == k:
                threshold = max(threshold, float(best_scores[-1]))
            near = to_host(cupy.flatnonzero(valid & (approx + slack >= threshold)))
            if len(near):
                rows_x = block[near] if isinstance(block, np.ndarray) else to_host(x[cupy.asarray(near)])
                exact = chunk_scores(head, rows_x, strategy)
                merged = np.concatenate([best_rows, index[near]])
                best_rows, best_scores = top_k(np.concatenate([best_scores, exact]), merged, k, seed,
                                               None if keys is None else keys[merged])
            done += m
            if progress is not None:
                progress(done, total)
    return best_rows, best_scores
