"""Helpers every strategy algorithm shares: argument checks, seeded randomness, the tie rule for one
winner, row blocks of an embedding table, and FAISS (k-nearest neighbours, k-means) on CPU or GPU.

Row sets are table rows (int64 indices into `embeddings`). Algorithms work on a *span* of the table:
when the rows fill most of the stretch of the table they lie in, the span is that whole stretch and
blocks are views of the table (no gather; rows outside the set are masked), otherwise the span is
the rows themselves, gathered block by block. Either way memory is one block plus per-row state.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import zlib
from typing import Iterator

import numpy as np
import torch

from embedcache.devices import torch_threads
from embedcache.errors import ConfigError
from embedcache.scoring import tie_priority

#: Bytes of float32 embeddings per block.
BLOCK_BYTES = 1 << 25


# ---------------------------------------------------------------------- arguments
def check_table(embeddings, name: str = "embeddings") -> np.ndarray:
    """A 2-D float numpy array (a view, not a copy)."""
    table = np.asarray(embeddings)
    if table.ndim != 2 or not np.issubdtype(table.dtype, np.floating):
        raise ConfigError(f"{name} must be a 2-D float array [rows, dims], got shape {table.shape} of {table.dtype}")
    return table


def check_rows(rows, n_table: int, name: str) -> np.ndarray:
    """Sorted unique int64 rows of a table with `n_table` rows; duplicates or rows out of range are errors."""
    rows = np.asarray(rows)
    if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
        raise ConfigError(f"{name} must be a 1-D array of row indices, got shape {rows.shape} of {rows.dtype}")
    rows = rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n_table):
        raise ConfigError(f"{name} holds rows outside 0..{n_table - 1} (min {rows.min()}, max {rows.max()})")
    if len(rows) > 1 and not (rows[1:] > rows[:-1]).all():
        rows = np.sort(rows)
        repeated = np.flatnonzero(rows[1:] == rows[:-1])
        if len(repeated):
            raise ConfigError(f"{name} lists rows more than once (e.g. row {rows[repeated[0]]})")
    return rows


def check_disjoint(candidates: np.ndarray, labelled: np.ndarray, n_table: int) -> None:
    is_labelled = np.zeros(n_table, dtype=bool)
    is_labelled[labelled] = True
    both = candidates[is_labelled[candidates]]
    if len(both):
        raise ConfigError(f"candidates and labelled share {len(both)} rows (e.g. row {both[0]}): "
                          "candidates must be unlabelled")


def check_k(k, available: int, what: str = "candidates") -> int:
    """k as an int in 1..available."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    if k > available:
        raise ConfigError(f"k = {k} is more than the {available} {what}")
    return int(k)


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_aligned(array, n_rows: int, name: str, ndim: int, rows_name: str = "candidates") -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != ndim or len(array) != n_rows:
        raise ConfigError(f"{name} must have {ndim} dimensions and one row per entry of {rows_name} ({n_rows}), "
                          f"got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ConfigError(f"{name} holds NaN or infinite values")
    return array


def device_of(device: str | torch.device) -> torch.device:
    """"auto" is CUDA when torch sees a GPU, else the CPU."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return resolved


# ---------------------------------------------------------------------- randomness and ties
def generator(seed: int, purpose: str) -> np.random.Generator:
    """A numpy Generator seeded from (seed, purpose), so two uses of one seed draw independent streams."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(purpose.encode())])


def row_uniforms(keys: np.ndarray, seed: int, purpose: str) -> np.ndarray:
    """A uniform draw in (0, 1) per key from a hash of (key, seed, purpose): the same key gets the same
    draw whichever other keys are drawn with it (like the random strategy's scores)."""
    salt = zlib.crc32(purpose.encode())
    bits = tie_priority(np.asarray(keys, dtype=np.int64), (int(seed) ^ salt) & 0xFFFFFFFF) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) / float(1 << 53)


def best(values: np.ndarray, keys: np.ndarray, seed: int) -> int:
    """Position of the largest value; equal values go to the key with the lowest `tie_priority`."""
    top = values.max()
    tied = np.flatnonzero(values == top)
    if len(tied) == 1:
        return int(tied[0])
    return int(tied[np.argmin(tie_priority(keys[tied], seed))])


# ---------------------------------------------------------------------- arrays on the CPU or a GPU
# On the CPU the algorithms run on numpy arrays (OpenBLAS): torch's CPU ops contend with OpenBLAS's
# threads (a 64 x 5 torch reduction took 20 ms next to numpy BLAS calls on the 2-core machine) and its
# MKL build runs AVX2 code on AMD CPUs. On CUDA the same code runs on torch tensors.
def to_device(array: np.ndarray, device: torch.device):
    """A host array as the device's array type (numpy itself on the CPU)."""
    return array if device.type == "cpu" else torch.from_numpy(np.ascontiguousarray(array)).to(device)


def to_host(array) -> np.ndarray:
    return array if isinstance(array, np.ndarray) else array.cpu().numpy()


def row_norms2(block):
    """‖x‖² of each row."""
    if isinstance(block, np.ndarray):
        return np.einsum("ij,ij->i", block, block)
    return torch.einsum("ij,ij->i", block, block)


def row_min(block):
    return block.min(axis=1) if isinstance(block, np.ndarray) else torch.amin(block, dim=1)


def flat_where(mask, values) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices where a 2-D mask holds, and the values there (found on the mask's device)."""
    if isinstance(mask, np.ndarray):
        flat = np.flatnonzero(mask)
        return flat, values.ravel()[flat]
    flat = torch.nonzero(mask.reshape(-1)).reshape(-1)
    return flat.cpu().numpy(), values.reshape(-1)[flat].cpu().numpy()


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Memory-bound products (matrix-vector, thin matrices) on one BLAS thread, and torch's elementwise
    ops on one thread: waking a second thread cost 10x on the shared 2-core machine (a 7,000 x 512
    sgemv: 10 ms on two threads, 1 ms on one)."""
    with torch_threads(1), _blas_controller().limit(limits=1, user_api="blas"):
        yield


def log_(array: np.ndarray) -> np.ndarray:
    """The natural logarithm of a float numpy array, in place, by torch (its vectorised log is 3x numpy's
    on the benchmark machine, where numpy finds no AVX-512)."""
    torch.from_numpy(array).log_()
    return array


def map_parallel(fn, parts: list) -> list:
    """fn over parts on one thread per core (numpy releases the GIL), BLAS on one thread each."""
    workers = min(len(parts), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(part) for part in parts]
    with one_thread(), concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, parts))


def default_block_rows(dim: int) -> int:
    return max(256, BLOCK_BYTES // (4 * max(1, dim)))


class Span:
    """Table rows read in float32 blocks: a stretch of the table when `rows` fill at least half of it
    (blocks are views, `member` masks rows outside the set), else the rows themselves (gathered).

    Per-row state lives at *positions* 0..len(span)-1; `span[pos]` is the table row, `position(rows)`
    maps table rows back. Blocks are numpy arrays on the CPU; on CUDA they are torch tensors, uploaded
    once and kept on the device.
    """

    def __init__(self, embeddings: np.ndarray, rows: np.ndarray, device: torch.device,
                 block_rows: int | None = None):
        self.table = embeddings
        self.device = device
        self.block_rows = check_positive_int(block_rows, "block_rows") if block_rows is not None \
            else default_block_rows(embeddings.shape[1])
        if len(rows) and 2 * len(rows) >= rows[-1] - rows[0] + 1:
            self.start = int(rows[0])
            self.span = np.arange(rows[0], rows[-1] + 1, dtype=np.int64)
            self.member = np.zeros(len(self.span), dtype=bool)
            self.member[rows - self.start] = True
            self.contiguous = True
        else:
            self.start = 0
            self.span = rows
            self.member = np.ones(len(rows), dtype=bool)
            self.contiguous = False
        self._resident: list | None = None

    def __len__(self) -> int:
        return len(self.span)

    def position(self, rows: np.ndarray) -> np.ndarray:
        """Positions of table rows that are in the span (callers pass only such rows)."""
        if self.contiguous:
            return np.asarray(rows, dtype=np.int64) - self.start
        return np.searchsorted(self.span, rows)

    def host_block(self, lo: int, hi: int) -> np.ndarray:
        """float32 C-contiguous embeddings of positions lo..hi-1 (a view of the table when possible)."""
        if self.contiguous:
            block = self.table[self.start + lo:self.start + hi]
        else:
            block = self.table[self.span[lo:hi]]
        return np.ascontiguousarray(block, dtype=np.float32)

    def bounds(self, step: int | None = None) -> list[tuple[int, int]]:
        step = step or self.block_rows
        return [(lo, min(lo + step, len(self))) for lo in range(0, len(self), step)]

    def map_blocks(self, fn) -> None:
        """fn(lo, hi, block) for every block: on the CPU spread over one thread per core (numpy releases
        the GIL; BLAS on one thread each), in pieces small enough to balance them; in order on CUDA."""
        if self.device.type != "cpu":
            for lo, hi, block in self.blocks():
                fn(lo, hi, block)
            return
        pieces = 4 * (os.cpu_count() or 1)
        step = min(self.block_rows, max(256, -(-len(self) // pieces)))
        map_parallel(lambda bounds: fn(*bounds, self.host_block(*bounds)), self.bounds(step))

    def blocks(self):
        """(lo, hi, float32 embeddings of positions lo..hi-1 on the device), in order."""
        if self.device.type == "cpu":
            for lo, hi in self.bounds():
                yield lo, hi, self.host_block(lo, hi)
            return
        if self._resident is None:
            self._resident = [to_device(self.host_block(lo, hi), self.device) for lo, hi in self.bounds()]
        for (lo, hi), block in zip(self.bounds(), self._resident):
            yield lo, hi, block

    def host_take(self, positions: np.ndarray) -> np.ndarray:
        """float32 C-contiguous embeddings of some positions, on the host."""
        return np.ascontiguousarray(self.table[self.span[positions]], dtype=np.float32)

    def take(self, positions: np.ndarray):
        """float32 embeddings of some positions, on the device."""
        return to_device(self.host_take(positions), self.device)

    def squared_norms(self) -> np.ndarray:
        """‖x‖² per position, float32, on the host."""
        norms = np.empty(len(self), dtype=np.float32)

        def fill(lo, hi, block):
            norms[lo:hi] = to_host(row_norms2(block))

        self.map_blocks(fill)
        return norms


# ---------------------------------------------------------------------- FAISS
def faiss_module():
    try:
        import faiss
    except ImportError:  # a dependency, but an environment may lack its binary wheel
        raise ConfigError("this strategy needs FAISS: pip install faiss-cpu (or faiss-gpu-cu12)") from None
    return faiss


def faiss_gpu(device: torch.device) -> bool:
    """Whether FAISS work goes to the GPU: only when the strategy runs on CUDA and faiss-gpu sees one."""
    faiss = faiss_module()
    return device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_GPU_RESOURCES = []


def gpu_resources():
    if not _GPU_RESOURCES:
        _GPU_RESOURCES.append(faiss_module().StandardGpuResources())
    return _GPU_RESOURCES[0]


def knn(queries: np.ndarray, database: np.ndarray, k: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest database rows of each query: (squared L2 distances [nq, k], indices [nq, k]),
    nearest first; faiss-gpu's brute force on a CUDA device when it sees one, `faiss.knn` otherwise."""
    faiss = faiss_module()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    database = np.ascontiguousarray(database, dtype=np.float32)
    if faiss_gpu(device):
        return faiss.knn_gpu(gpu_resources(), queries, database, k, device=device.index or 0)
    return faiss.knn(queries, database, k)


def kmeans_plus_plus(points: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): each next seed drawn with probability proportional
    to the squared distance to the nearest seed so far. float32 seeds [n_clusters, D]."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    norms = np.einsum("ij,ij->i", points, points).astype(np.float64)
    chosen = [int(rng.integers(len(points)))]
    nearest = np.full(len(points), np.inf)
    with one_thread():  # one matrix-vector product per seed
        for _ in range(1, n_clusters):
            last = chosen[-1]
            np.minimum(nearest, np.maximum(norms + norms[last] - 2.0 * (points @ points[last]), 0.0), out=nearest)
            nearest[chosen] = 0.0
            total = np.cumsum(nearest)
            if total[-1] > 0:
                chosen.append(int(np.searchsorted(total, rng.random() * total[-1], side="right")))
            else:  # fewer distinct points than seeds: any point not chosen yet
                chosen.append(int(rng.choice(np.setdiff1d(np.arange(len(points)), chosen))))
    return points[chosen]


def kmeans_centroids(sample: np.ndarray, n_clusters: int, seed: int, iterations: int,
                     device: torch.device) -> np.ndarray:
    """k-means on the given sample rows: float32 centroids [n_clusters, D].

    The start is k-means++ (scikit-learn's KMeans start, which the TypiClust and ProbCover authors
    used; FAISS's default random start can leave a well-separated cluster without a centroid), drawn on
    a seeded subsample of at most 32 rows per cluster (FAISS's own k-means++ pass over the whole sample
    costs more than its Lloyd iterations); then `iterations` Lloyd steps by FAISS.
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    rng = generator(seed, "kmeans++")
    subsample = sample[np.sort(rng.choice(len(sample), size=min(len(sample), 32 * n_clusters), replace=False))]
    seeds = kmeans_plus_plus(subsample, n_clusters, rng)
    if iterations == 0:
        return seeds
    kmeans = faiss_module().Kmeans(sample.shape[1], n_clusters, niter=iterations, seed=int(seed) & 0x7FFFFFFF,
                                   max_points_per_centroid=max(1, len(sample)), min_points_per_centroid=1,
                                   gpu=faiss_gpu(device))
    kmeans.train(sample, init_centroids=seeds)
    return kmeans.centroids


def kmeans_labels(span: Span, n_clusters: int, seed: int, *, iterations: int = 25,
                  points_per_centroid: int = 256) -> np.ndarray:
    """k-means cluster of every member position of `span` (-1 elsewhere): centroids from a seeded
    sample of at most `points_per_centroid` rows per cluster (FAISS's own default), then every row
    assigned to its nearest centroid block by block."""
    members = np.flatnonzero(span.member)
    if n_clusters > len(members):
        raise ConfigError(f"{n_clusters} clusters asked for, but only {len(members)} rows to cluster")
    size = min(len(members), points_per_centroid * n_clusters)
    sample = np.sort(generator(seed, "kmeans sample").choice(members, size=size, replace=False))
    centroids = kmeans_centroids(span.table[span.span[sample]], n_clusters, seed, iterations, span.device)
    labels = np.full(len(span), -1, dtype=np.int64)
    for lo, hi, block in span.blocks():
        _, nearest = knn(to_host(block), centroids, 1, span.device)
        labels[lo:hi] = nearest[:, 0]
    labels[~span.member] = -1
    return labels

