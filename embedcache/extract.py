"""Extraction: a dataset through a backbone into an HDF5 cache, batched, resumable and shardable."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from embedcache.backbones import Backbone
from embedcache.cache import EmbeddingCache
from embedcache.datasets import DatasetAdapter
from embedcache.errors import CacheError, ConfigError, DatasetError
from embedcache.metadata import Metadata

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: progress(done, total): called once at the start and after every batch.
Progress = Callable[[int, int], None]


@dataclasses.dataclass
class ExtractOptions:
    """How to run an extraction; nothing here changes the numbers except `amp` and `dtype` (in the recipe)."""

    batch_size: int = 64
    num_workers: int | None = None  # None: one fewer than the CPU count (at most 8) for images, 0 for text
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str | None = None  # bf16 | fp16 autocast for the forward pass
    dtype: str = "float16"  # storage dtype
    channels_last: bool | None = None  # None: on for images on CUDA
    shard: tuple[int, int] = (0, 1)  # (index, count): extract the index-th of count contiguous slices
    resume: bool = False
    overwrite: bool = False
    skip_bad: bool = False


@dataclasses.dataclass
class ExtractResult:
    path: Path
    rows: int  # rows in the finished cache
    resumed_from: int  # rows already present when this call started
    skipped: list[tuple[str, str]]  # (id, reason) of examples left out with skip_bad
    seconds: float


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return resolved


def shard_range(n: int, index: int, count: int) -> range:
    """The index-th of `count` contiguous, near-equal slices of range(n)."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {index}/{count}: need 0 <= I < N")
    return range(index * n // count, (index + 1) * n // count)


class _Examples(torch.utils.data.Dataset):
    """Loads and transforms example `rows[k]`; failures are returned, not raised, so they can be skipped."""

    def __init__(self, dataset: DatasetAdapter, transform: Callable, rows: Sequence[int]):
        self.dataset, self.transform, self.rows = dataset, transform, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        try:
            return self.transform(self.dataset.load(self.rows[k])), None
        except DatasetError as e:
            return None, str(e)
        except Exception as e:  # a transform failing on odd input (e.g. a 1-pixel image)
            return None, f"{self.dataset.location(self.rows[k])}: {type(e).__name__}: {e}"


class _Collate:
    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, items: list):
        good = [x for x, err in items if err is None]
        errors = {k: err for k, (_, err) in enumerate(items) if err is not None}
        return len(items), (self.collate(good) if good else None), errors


def default_workers(modality: str) -> int:
    """Loader processes when none are asked for: one fewer than the CPUs (at most 8) for images, 0 for text."""
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if modality == "image" else 0


def example_loader(dataset: DatasetAdapter, transform: Callable, collate: Callable, rows: Sequence[int],
                   batch_size: int, num_workers: int | None = None,
                   pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches of dataset `rows` in order, as `(size, batch, errors)`: `batch` collates the examples that
    loaded (None if none did), `errors` maps a failed example's position in the batch to its message.
    Extraction and finetuning both read examples through this one loader."""
    workers = default_workers(dataset.modality) if num_workers is None else num_workers
    return torch.utils.data.DataLoader(_Examples(dataset, transform, rows), batch_size=batch_size, shuffle=False,
                                       num_workers=workers, collate_fn=_Collate(collate), pin_memory=pin_memory)


def _open_output(path: Path, metadata: Metadata, dim: int, recipe: dict, dataset: dict, shard: dict | None,
                 options: ExtractOptions) -> EmbeddingCache:
    """A new cache, or the one to resume (interrupted, or already complete: nothing left to do);
    never silently replaces an existing file."""
    if path.exists() and not options.overwrite:
        try:
            existing = EmbeddingCache(path, "r+")
        except CacheError as e:
            raise CacheError(f"{path} exists and is not a cache this version can resume ({e}); "
                             "choose another --out or pass --overwrite") from None
        try:
            existing.check_recipe(recipe)
            if existing.dataset.get("manifest_sha256") != dataset["manifest_sha256"] or existing.shard != shard:
                raise CacheError(f"{path} was made from another dataset or shard; choose another --out or pass "
                                 "--overwrite")
            if existing.complete and not options.resume:
                raise CacheError(f"{path} is already complete; pass --overwrite to extract it again "
                                 "(--resume leaves it as it is)")
            if not options.resume:
                raise CacheError(f"{path} holds an interrupted extraction ({existing.rows_written}/"
                                 f"{existing.n_rows} rows); pass --resume to continue or --overwrite to start over")
        except CacheError:
            existing.close()
            raise
        return existing
    if path.exists():
        path.unlink()
    return EmbeddingCache.create(path, metadata, dim=dim, dtype=options.dtype, recipe=recipe,
                                 dataset=dataset, shard=shard)


def extract(dataset: DatasetAdapter, backbone: Backbone, out: str | Path, options: ExtractOptions | None = None,
            progress: Progress | None = None) -> ExtractResult:
    """Run `backbone` over `dataset` (or one shard of it) and write the features to the cache `out`.

    Rows are written in dataset order. With `resume`, an interrupted cache with the same recipe,
    dataset and shard continues at its last written row. A bad example (missing or unreadable
    file) stops the run with an error naming it, unless `skip_bad`, which records and drops it.
    """
    options = options or ExtractOptions()
    started = time.perf_counter()
    out = Path(out)
    if options.amp is not None and options.amp not in AMP_DTYPES:
        raise ConfigError(f"--amp must be one of {sorted(AMP_DTYPES)}, got {options.amp!r}")
    if options.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    device = resolve_device(options.device)
    index, count = options.shard
    rows = shard_range(len(dataset.metadata), index, count)
    if not len(rows):
        raise ConfigError(f"--shard {index}/{count} is empty: the dataset has only {len(dataset.metadata)} rows")
    if not options.skip_bad:
        missing = [i for i in dataset.missing_files() if i in rows]
        if missing:
            raise DatasetError(f"{len(missing)} image file(s) not found, e.g. {dataset.location(missing[0])}; "
                               "fix the paths or pass --skip-bad to leave them out")
    recipe = backbone.recipe(options.dtype, options.amp).to_dict()
    shard = None if count == 1 else {"index": index, "count": count, "start": rows.start, "stop": rows.stop,
                                     "total": len(dataset.metadata)}
    cache = _open_output(out, dataset.metadata.take(np.arange(rows.start, rows.stop)), backbone.num_features,
                         recipe, dataset.describe(), shard, options)
    with cache:
        done = cache.rows_written
        if not cache.complete:
            _run(dataset, backbone, cache, rows[done:], device, options, progress, done, len(rows))
            cache.finalize()
        return ExtractResult(path=out, rows=cache.n_rows, resumed_from=done,
                             skipped=list(zip(cache.skipped_ids, cache.skipped_errors)),
                             seconds=time.perf_counter() - started)


def _run(dataset: DatasetAdapter, backbone: Backbone, cache: EmbeddingCache, rows: range, device: torch.device,
         options: ExtractOptions, progress: Progress | None, done: int, total: int) -> None:
    loader = example_loader(dataset, backbone.transform, backbone.collate, rows, options.batch_size,
                            options.num_workers, pin_memory=device.type == "cuda")
    channels_last = options.channels_last
    if channels_last is None:
        channels_last = device.type == "cuda" and backbone.modality == "image"
    model = backbone.model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=AMP_DTYPES.get(options.amp, torch.bfloat16),
                              enabled=options.amp is not None)
    if progress:
        progress(done, total)
    position = 0  # index into `rows` of the batch's first example
    with torch.inference_mode(), autocast:
        for size, batch, errors in loader:
            features = np.zeros((0, cache.dim), dtype=np.float32)
            if batch is not None:
                features = backbone.features(backbone.batch_to(batch, device, channels_last)).float().cpu().numpy()
                good = [k for k in range(size) if k not in errors]
                finite = np.isfinite(features).all(axis=1)
                for j in np.flatnonzero(~finite):
                    errors[good[j]] = f"{dataset.location(rows[position + good[j]])}: the backbone gave NaN/inf features"
                features = features[finite]
            if errors and not options.skip_bad:
                raise DatasetError(f"{errors[min(errors)]}. Rows before it are saved in {cache.path}: fix the input "
                                   "and rerun with --resume, or pass --skip-bad to leave bad examples out")
            cache.append(features, skipped=errors)
            position += size
            if progress:
                progress(done + position, total)
