"""The CPU path, and the arithmetic that defines every backend's scores.

Logits are float32 BLAS products of one chunk of rows at a time, processed class-major ([C, m], so
every class's values are contiguous) with element-wise numpy, then scored by the formulas of
`embedcache.scoring`. The same pool, candidates and chunking give the same bits on one machine;
BLAS promises nothing across kernels or matrix shapes (OpenBLAS sums a row's dot product in a
different order for another number of rows, or under another `OPENBLAS_CORETYPE`), so across
chunkings and machines scores agree only within the contract's tolerance (see kernels/README.md).

Chunks are scored in parallel on a thread pool (numpy and BLAS release the GIL; each BLAS call
runs on one thread), each chunk keeps its own top-k, and the main thread merges them with
`scoring.top_k`: memory stays bounded by (threads + 1) chunks whatever N is. The chunk size is a
function of the pool's width and dtype, the number of candidates and the thread count only, so a
resumed run or a worker process scores exactly as an uninterrupted one-process run on that machine.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

from embedcache.errors import ConfigError
from embedcache.pool import Pool, to_host
from embedcache.scoring import LOGIT_SCORES, PROBABILITY_SCORES, row_sum, top_k

#: Bytes of X per chunk handed to a thread, and the row multiple chunks are rounded to.
_CHUNK_BYTES = 1 << 25
_ROW_ALIGN = 256


def default_chunk_rows(dim: int, itemsize: int, rows: int, threads: int) -> int:
    """About 32 MiB of X per chunk, or less so that `rows` rows still give every thread a chunk."""
    largest = max(_ROW_ALIGN, (_CHUNK_BYTES // (dim * itemsize)) // _ROW_ALIGN * _ROW_ALIGN)
    balanced = -(-max(rows, 1) // threads)
    return min(largest, -(-balanced // _ROW_ALIGN) * _ROW_ALIGN)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _host(a: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(to_host(a), dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name} must be a float array ({e})") from None


@dataclasses.dataclass(frozen=True)
class LinearHead:
    """A linear classifier `x @ weight + bias` in the form the kernels use: float32, C-contiguous."""

    weight: np.ndarray  # [D, C]
    bias: np.ndarray  # [C]

    @classmethod
    def from_arrays(cls, W: Any, b: Any, dim: int) -> "LinearHead":
        """Check W [D, C] and b [C] against the pool's width D; errors name the argument at fault."""
        W, b = _host(W, "W"), _host(b, "b")
        if W.ndim != 2 or W.shape[0] != dim or W.shape[1] < 1:
            raise ConfigError(f"W must have shape [D, C] with D = {dim} (the width of X); got {W.shape}")
        if b.shape != (W.shape[1],):
            raise ConfigError(f"b must have shape ({W.shape[1]},) to match the {W.shape[1]} columns of W; got {b.shape}")
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise ConfigError("W and b must be finite (they hold NaN or inf)")
        return cls(np.ascontiguousarray(W), np.ascontiguousarray(b))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[1]

    def logits_t(self, x: np.ndarray) -> np.ndarray:
        """Class-major float32 logits [C, m] of the rows of x [m, D] (any float dtype): one BLAS call."""
        logits = np.matmul(self.weight.T, np.asarray(x, dtype=np.float32).T)
        logits += self.bias[:, None]
        return logits


def softmax_t_(logits: np.ndarray) -> np.ndarray:
    """Softmax over the classes of class-major logits [C, m], in place (max-shifted, float32)."""
    logits -= np.maximum.reduce(logits, axis=0)
    np.exp(logits, out=logits)
    logits /= row_sum(logits.T)
    return logits


def chunk_scores(head: LinearHead, x: np.ndarray, strategy: str) -> np.ndarray:
    """float32 scores of the rows of x, higher = acquire first (the definition every backend matches)."""
    logits = head.logits_t(x)
    if strategy in LOGIT_SCORES:
        return LOGIT_SCORES[strategy](logits.T)
    return PROBABILITY_SCORES[strategy](softmax_t_(logits).T)


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def single_threaded_blas():
    """One BLAS thread per call (process-wide while inside): the chunks already keep every core busy."""
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


def map_chunks(pool: Pool, rows: np.ndarray | None, chunk_rows: int, fn: Callable, threads: int,
               progress: Callable[[int, int], None] | None = None) -> Iterator:
    """fn(rows, block) for every chunk, on `threads` threads, results in chunk order; at most
    threads + 1 chunks are in memory at once."""
    total = pool.n_rows if rows is None else len(rows)
    done = 0
    with single_threaded_blas(), ThreadPoolExecutor(max_workers=threads) as executor:
        pending: collections.deque = collections.deque()
        for index, block in pool.chunks(rows, chunk_rows):
            pending.append((len(index), executor.submit(fn, index, to_host(block))))
            while len(pending) > threads or (pending and pending[0][1].done()):
                count, future = pending.popleft()
                yield future.result()
                done += count
                if progress is not None:
                    progress(done, total)
        while pending:
            count, future = pending.popleft()
            yield future.result()
            done += count
            if progress is not None:
                progress(done, total)


def non_finite(rows: np.ndarray) -> ConfigError:
    """The error for rows whose score is NaN or inf."""
    return ConfigError(f"{len(rows)} row(s) score NaN/inf, e.g. rows {rows[:5].tolist()}: X holds NaN or inf "
                       "values (check a cache with `embedcache info --check`) or the logits overflow")


def score_topk(pool: Pool, head: LinearHead, strategy: str, k: int, rows: np.ndarray | None,
               exclude: np.ndarray | None, seed: int, chunk_rows: int, threads: int,
               progress: Callable[[int, int], None] | None,
               keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The CPU scorer: exact scores for every candidate row, running top-k across chunks; ties by
    `keys[row]` (default the row)."""
    floor = [-np.inf]  # the k-th best score merged so far: a row below it cannot make the top-k

    def best_of_chunk(index, block):
        scores = chunk_scores(head, block, strategy)
        keep = np.ones(len(index), dtype=bool) if exclude is None else ~exclude[index]
        finite = np.isfinite(scores)
        if not finite[keep].all():
            raise non_finite(index[keep & ~finite])
        keep &= scores >= floor[0]
        return top_k(scores[keep], index[keep], k, seed, None if keys is None else keys[index[keep]])

    best_rows, best_scores = np.empty(0, np.int64), np.empty(0, np.float32)
    for chunk_rows_, chunk_scores_ in map_chunks(pool, rows, chunk_rows, best_of_chunk, threads, progress):
        merged = np.concatenate([best_rows, chunk_rows_])
        best_rows, best_scores = top_k(np.concatenate([best_scores, chunk_scores_]), merged, k, seed,
                                       None if keys is None else keys[merged])
        if len(best_rows) == k:
            floor[0] = best_scores[-1]
    return best_rows, best_scores


def predict(pool: Pool, head: LinearHead, rows: np.ndarray | None, chunk_rows: int, threads: int,
            proba: bool) -> np.ndarray:
    """Logits or probabilities [n, C] of `rows` (in the order given), with the scorer's arithmetic.

    The result is a column-major view of the class-major array the scorer works on.
    """
    n = pool.n_rows if rows is None else len(rows)
    out = np.empty((head.num_classes, n), dtype=np.float32)
    order = None if rows is None else np.argsort(rows, kind="stable")

    def compute(index, block):
        logits = head.logits_t(block)
        return softmax_t_(logits) if proba else logits

    start = 0
    for values in map_chunks(pool, None if rows is None else rows[order], chunk_rows, compute, threads):
        stop = start + values.shape[1]
        out[:, slice(start, stop) if order is None else order[start:stop]] = values
        start = stop
    return out.T


@dataclasses.dataclass(frozen=True)
class Heads:
    """Several heads applied to each chunk of a pool that is read once for all of them.

    Per head (`stack=False`), each head's logits are its own product, the very call `score_topk` makes,
    so each head's results are those of scoring it alone with the same chunking, bit for bit. Stacked
    (`stack=True`), the heads' columns go side by side into one product per chunk (one GEMM instead of
    one GEMV-like product each), leaving out columns that are zero with a zero bias (a binary head's
    constant class) and restoring them as exact zeros; a product of another shape sums in another
    order, so results then agree with scoring each head alone up to ties."""

    heads: tuple[LinearHead, ...]
    stack: bool = False

    @functools.cached_property
    def _stacked(self) -> tuple[LinearHead, list[np.ndarray], list[int]]:
        live = [~((h.weight == 0).all(axis=0) & (h.bias == 0)) for h in self.heads]
        counts = [int(m.sum()) for m in live]
        offsets = [int(o) for o in np.cumsum([0, *counts])[:-1]]
        weight = np.concatenate([h.weight[:, m] for h, m in zip(self.heads, live)], axis=1)
        bias = np.concatenate([h.bias[m] for h, m in zip(self.heads, live)])
        return LinearHead(np.ascontiguousarray(weight), np.ascontiguousarray(bias)), live, offsets

    def logits_t(self, x: np.ndarray) -> list[np.ndarray]:
        """Each head's class-major float32 logits [C, m] of the rows of x."""
        if not self.stack:
            return [head.logits_t(x) for head in self.heads]
        stacked, live, offsets = self._stacked
        product = stacked.logits_t(x) if stacked.num_classes else None
        result = []
        for head, columns, offset in zip(self.heads, live, offsets):
            logits = np.zeros((head.num_classes, len(x)), dtype=np.float32)
            logits[columns] = product[offset:offset + int(columns.sum())]
            result.append(logits)
        return result


def score_topk_many(pool: Pool, heads: Heads, strategies: list[str], ks: list[int],
                    excludes: list[np.ndarray | None], seeds: list[int], rows: np.ndarray | None, chunk_rows: int,
                    threads: int, keys: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """`score_topk` for several heads over one pass of the pool: per chunk each head's logits (`Heads`),
    then its scores, exclusions, running top-k and tie rule exactly as `score_topk` applies them."""
    count = len(strategies)
    floors = [-np.inf] * count

    def best_of_chunk(index, block):
        results = []
        for i, logits in enumerate(heads.logits_t(block)):
            strategy, exclude = strategies[i], excludes[i]
            scores = LOGIT_SCORES[strategy](logits.T) if strategy in LOGIT_SCORES else \
                PROBABILITY_SCORES[strategy](softmax_t_(logits).T)
            keep = np.ones(len(index), dtype=bool) if exclude is None else ~exclude[index]
            finite = np.isfinite(scores)
            if not finite[keep].all():
                raise non_finite(index[keep & ~finite])
            keep &= scores >= floors[i]
            kept = index[keep]
            results.append(top_k(scores[keep], kept, ks[i], seeds[i], None if keys is None else keys[kept]))
        return results

    best = [(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in range(count)]
    for chunk in map_chunks(pool, rows, chunk_rows, best_of_chunk, threads):
        for i, (chunk_rows_, chunk_scores_) in enumerate(chunk):
            merged = np.concatenate([best[i][0], chunk_rows_])
            best[i] = top_k(np.concatenate([best[i][1], chunk_scores_]), merged, ks[i], seeds[i],
                            None if keys is None else keys[merged])
            if len(best[i][0]) == ks[i]:
                floors[i] = best[i][1][-1]
    return best


def predict_many(pool: Pool, heads: Heads, rows: np.ndarray | None, chunk_rows: int, threads: int,
                 proba: bool) -> list[np.ndarray]:
    """`predict` for several heads over one pass of the pool: each head's [n, C] logits or probabilities."""
    n = pool.n_rows if rows is None else len(rows)
    outs = [np.empty((h.num_classes, n), dtype=np.float32) for h in heads.heads]
    order = None if rows is None else np.argsort(rows, kind="stable")

    def compute(index, block):
        return [softmax_t_(logits) if proba else logits for logits in heads.logits_t(block)]

    start = 0
    for values in map_chunks(pool, None if rows is None else rows[order], chunk_rows, compute, threads):
        stop = start + values[0].shape[1]
        where = slice(start, stop) if order is None else order[start:stop]
        for out, value in zip(outs, values):
            out[:, where] = value
        start = stop
    return [out.T for out in outs]
