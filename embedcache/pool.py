"""Where a pool of embeddings lives, and how to stream it a chunk at a time.

A pool is a numpy array, a torch tensor (CPU or CUDA), a CuPy array or an `EmbeddingCache`, of
shape [N, D]. `as_pool` wraps any of them; `Pool.chunks` yields (row indices, block) a chunk at a
time and the backends move each block where they compute (`to_host`, `to_gpu`), so no backend
holds more than one chunk of a pool that lives elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator

import numpy as np

from embedcache.cache import EmbeddingCache
from embedcache.errors import ConfigError

FLOAT_DTYPES = ("float16", "float32", "float64")


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[Any, str]:
    """(cupy, "") when CuPy is installed and sees a CUDA device, else (None, why not)."""
    try:
        import cupy
    except ImportError as e:
        return None, f"CuPy is not installed ({e}); pip install 'embedcache[gpu]'"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError without a driver, and friends
        return None, f"CuPy finds no CUDA device ({e})"
    return (cupy, "") if count > 0 else (None, "CuPy finds no CUDA device")


def _is_cupy(x: Any) -> bool:
    return type(x).__module__.startswith("cupy")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


@dataclasses.dataclass
class Pool:
    """A [N, D] pool and where it lives: "host" (numpy, torch CPU, cache) or "gpu" (CuPy, torch CUDA)."""

    data: Any
    n_rows: int
    dim: int
    dtype: np.dtype
    location: str

    def chunks(self, rows: np.ndarray | None, chunk_rows: int) -> Iterator[tuple[np.ndarray, Any]]:
        """(row indices, [m, D] block) over `rows` (None = all, in order), `chunk_rows` at a time.

        Blocks are of the pool's own kind (numpy, CuPy or torch; numpy for a cache); `to_host` and
        `to_gpu` move them. A cache yields `rows` in ascending order; arrays keep the order given.
        """
        if isinstance(self.data, EmbeddingCache):
            yield from self.data.iter_chunks(rows=rows, chunk_rows=chunk_rows)
        else:
            yield from self._array_chunks(rows, chunk_rows)

    def _array_chunks(self, rows, chunk_rows):
        x = self.data
        if rows is None:
            for start in range(0, self.n_rows, chunk_rows):
                stop = min(start + chunk_rows, self.n_rows)
                yield np.arange(start, stop), x[start:stop]
            return
        for start in range(0, len(rows), chunk_rows):
            part = rows[start:start + chunk_rows]
            yield part, x[to_gpu(part) if _is_cupy(x) else part]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows as a host array, in the order given."""
        if isinstance(self.data, EmbeddingCache):
            return self.data.embeddings(rows)
        return to_host(self.data[to_gpu(rows) if _is_cupy(self.data) else rows])


def to_host(block: Any) -> np.ndarray:
    if isinstance(block, np.ndarray):
        return block
    if _is_cupy(block):
        return block.get()
    if _is_torch(block):
        return block.detach().cpu().numpy()
    return np.asarray(block)


def to_gpu(block: Any):
    import cupy

    if _is_torch(block):
        return cupy.from_dlpack(block.detach())
    return cupy.asarray(block)


def as_pool(x: Any) -> Pool:
    """Wrap an array, tensor or cache as a `Pool`; raise ConfigError for anything that is not [N, D] floats."""
    if isinstance(x, EmbeddingCache):
        return Pool(x, x.n_rows, x.dim, np.dtype(x.dtype), "host")
    location = "host"
    if _is_torch(x):
        import torch

        if x.dtype not in (torch.float16, torch.float32, torch.float64):
            raise ConfigError(f"X is a torch tensor of {x.dtype}; pass float16 or float32")
        x = x.detach()
        if x.is_cuda:
            location = "gpu"
            cupy, _ = cuda_status()
            if cupy is not None:
                x = cupy.from_dlpack(x)  # zero-copy; without CuPy, chunks are copied to the host
        else:
            x = x.numpy()
    elif _is_cupy(x):
        location = "gpu"
    else:
        x = np.asarray(x)
    dtype = np.dtype(str(x.dtype).removeprefix("torch."))
    if x.ndim != 2:
        raise ConfigError(f"X must be a 2-D [N, D] array of embeddings, got shape {tuple(x.shape)}")
    if dtype.name not in FLOAT_DTYPES:
        raise ConfigError(f"X holds {dtype}; embeddings must be float16 or float32")
    return Pool(x, int(x.shape[0]), int(x.shape[1]), dtype, location)


def check_rows(rows: Any, n_rows: int) -> np.ndarray | None:
    """`rows` as an int64 array of unique indices into a pool of `n_rows` (None stays None: every row)."""
    if rows is None:
        return None
    rows = np.asarray(to_host(rows))
    if rows.ndim != 1 or not (rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
        raise ConfigError(f"rows must be a 1-D array of row indices, got {rows.dtype} of shape {rows.shape}")
    rows = rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ConfigError(f"rows must lie in 0..{n_rows - 1}; got {int(rows.min())}..{int(rows.max())}")
    if len(np.unique(rows)) != len(rows):
        raise ConfigError("rows must not repeat an index")
    return rows


def check_exclude(exclude: Any, n_rows: int) -> np.ndarray | None:
    """`exclude` as a boolean mask over the pool's rows (None: nothing excluded)."""
    if exclude is None:
        return None
    exclude = np.asarray(to_host(exclude))
    if exclude.dtype != bool or exclude.shape != (n_rows,):
        raise ConfigError(f"exclude must be a boolean mask of shape ({n_rows},), got {exclude.dtype} {exclude.shape}")
    return exclude
