"""The GPU path: CuPy kernels score every row on the device; the host orders the few that can make the top-k.

Per chunk (one chunk on the device at a time), `gpu_scores` runs the fused kernel of `scores.cu`
(C <= 32: logits, softmax, score and mask in one pass over X) or a cuBLAS GEMM followed by a fused
softmax/score/mask kernel (larger C). The device keeps the rows scoring at least the k-th best so
far (a `partition`, no sort), and `scoring.top_k` orders those few on the host with the same tie
rule as the CPU path. GPU and CPU round differently in the last bits, so the two backends agree up
to ties within the contract's tolerance (kernels/README.md), not bit for bit.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable

import numpy as np

from embedcache.kernels.cpu import LinearHead, non_finite
from embedcache.pool import Pool, to_gpu, to_host
from embedcache.scoring import top_k

SOURCE = Path(__file__).with_name("scores.cu")
CODES = {"least-confidence": 0, "entropy": 1, "margin": 2, "max-logit": 3}
#: Heads with at most this many classes use the one-pass fused kernel; wider ones a GEMM first.
FUSED_MAX_CLASSES = 32
_THREADS = 256  # WARPS_PER_BLOCK (8) warps in scores.cu
_CHUNK_BYTES = 1 << 28


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


def gpu_scores(x, head: LinearHead, weight, bias, strategy: str, excluded):
    """float32 scores (-inf where `excluded`) of a [m, D] CuPy block."""
    import cupy

    m, d = x.shape
    if x.dtype not in (np.float16, np.float32):
        x = x.astype(cupy.float32)
    x = cupy.ascontiguousarray(x)
    score = cupy.empty(m, dtype=cupy.float32)
    n, dim, code = np.int64(m), np.int32(d), np.int32(CODES[strategy])
    if head.num_classes <= FUSED_MAX_CLASSES:
        _launch(f"fused_scores<{_ctype(x)}, {head.num_classes}>", m, (x, n, dim, weight, bias, excluded, code, score))
    else:
        logits = cupy.ascontiguousarray(cupy.matmul(x, weight), dtype=cupy.float32)
        _launch("logit_scores", m, (logits, n, np.int32(head.num_classes), bias, excluded, code, score))
    return score


def score_topk(pool: Pool, head: LinearHead, strategy: str, k: int, rows: np.ndarray | None,
               exclude: np.ndarray | None, seed: int, chunk_rows: int | None,
               progress: Callable[[int, int], None] | None,
               keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The GPU scorer, with `cpu.score_topk`'s arguments and result (see the module docstring)."""
    import cupy

    device = pool.data.device if pool.location == "gpu" and hasattr(pool.data, "device") else cupy.cuda.Device()
    chunk_rows = chunk_rows or max(1, _CHUNK_BYTES // (pool.dim * pool.dtype.itemsize))
    total = pool.n_rows if rows is None else len(rows)
    best_rows, best_scores = np.empty(0, np.int64), np.empty(0, np.float32)
    done = 0
    with device:
        weight, bias = cupy.asarray(head.weight), cupy.asarray(head.bias)
        for index, block in pool.chunks(rows, chunk_rows):
            m = len(index)
            mask = np.zeros(m, dtype=bool) if exclude is None else exclude[index]
            score = gpu_scores(to_gpu(block), head, weight, bias, strategy, cupy.asarray(mask.view(np.uint8)))
            valid = ~cupy.asarray(mask)
            bad = valid & ~cupy.isfinite(score)
            if bool(bad.any()):
                raise non_finite(index[to_host(bad)])
            floor = float(best_scores[-1]) if len(best_rows) == k else -math.inf
            if m > k:  # the chunk's k-th best (excluded rows score -inf)
                floor = max(floor, float(cupy.partition(score, m - k)[m - k]))
            near = to_host(cupy.flatnonzero(valid & (score >= floor)))
            merged = np.concatenate([best_rows, index[near]])
            best_rows, best_scores = top_k(np.concatenate([best_scores, to_host(score[cupy.asarray(near)])]), merged,
                                           k, seed, None if keys is None else keys[merged])
            done += m
            if progress is not None:
                progress(done, total)
    return best_rows, best_scores
