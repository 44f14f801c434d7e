"""Extraction: a dataset through a backbone into an HDF5 cache, batched, resumable and shardable."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from embedcache.backbones import Backbone
from embedcache.cache import PARTIAL_SUFFIX, CacheWriteError, EmbeddingCache, NotACacheError, partial_path
from embedcache.datasets import DatasetAdapter
from embedcache.devices import resolve_amp, resolve_device
from embedcache.errors import CacheError, ConfigError, DatasetError
from embedcache.loading import example_loader
from embedcache.metadata import Metadata
from embedcache.recipe import recipe_difference, recipe_fingerprint

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: progress(done, total): called once at the start and after every batch.
Progress = Callable[[int, int], None]


@dataclasses.dataclass
class ExtractOptions:
    """How to run an extraction; nothing here changes the numbers except `amp` and `dtype` (in the recipe)."""

    batch_size: int = 64
    num_workers: int | None = None  # None: one fewer than the CPU count (at most 8) for images, 0 for text
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str | None = "none"  # auto | bf16 | fp16 | none: autocast of the forward pass (see `resolve_amp`)
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
    already_complete: bool  # `resume` found a complete cache at `out`: nothing was written
    skipped: list[tuple[str, str]]  # (id, reason) of examples left out with skip_bad
    seconds: float


def shard_range(n: int, index: int, count: int) -> range:
    """The index-th of `count` contiguous, near-equal slices of range(n)."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"{index}/{count}: need 0 <= I < N", param="shard")
    return range(index * n // count, (index + 1) * n // count)


def _difference(cache: EmbeddingCache, recipe: dict, dataset: dict, shard: dict | None) -> str | None:
    """How `cache` differs from the extraction asked for ("another recipe (...)", dataset or shard), or None."""
    if cache.fingerprint != recipe_fingerprint(recipe):
        return (f"another recipe (fingerprint {cache.fingerprint[:12]}, asked for {recipe_fingerprint(recipe)[:12]}: "
                + "; ".join(recipe_difference(cache.recipe, recipe)) + ")")
    if cache.dataset.get("manifest_sha256") != dataset["manifest_sha256"]:
        return "another dataset (its manifest differs)"
    if cache.shard != shard:
        return f"another shard ({cache.shard or 'the whole dataset'}, asked for {shard or 'the whole dataset'})"
    return None


def _open_cache(path: Path, problem: str, remedy: str) -> EmbeddingCache:
    """The cache at `path`; a file that is not one is a CacheError saying what it is and what to do."""
    try:
        return EmbeddingCache(path)
    except NotACacheError as e:
        raise CacheError(f"{path} {problem} ({e.reason}); {remedy}") from None


def _open_output(out: Path, metadata: Metadata, dim: int, recipe: dict, dataset: dict, shard: dict | None,
                 options: ExtractOptions) -> EmbeddingCache:
    """The cache to write or to finish, or, when `resume` finds nothing to do, the complete one at `out`.

    A cache being written lives in `<out>.partial` until `finalize` moves it onto `out`, so a file
    at `out` is complete, except one an older embedcache left interrupted in place, which `resume`
    still continues. Nothing is replaced without `overwrite`, and then only once the new cache is
    done. Each refusal says what is there and what each option would do with it.
    """
    if options.overwrite:
        return EmbeddingCache.create(out, metadata, dim=dim, dtype=options.dtype, recipe=recipe, dataset=dataset,
                                     shard=shard, overwrite=True)
    partial = partial_path(out)
    unfinished = partial if partial.exists() else None
    if out.exists():
        with _open_cache(out, "exists and is not an embedding cache",
                         "choose another `out`, or pass `overwrite` to replace it") as existing:
            if not existing.complete:
                unfinished = unfinished or out  # interrupted in place by an older embedcache
            elif (difference := _difference(existing, recipe, dataset, shard)) is None:
                if not options.resume:
                    raise CacheError(f"{out} is already complete with this recipe and dataset: nothing to do "
                                     "(`resume` accepts a complete cache without this error)")
                _remove_finished_partial(partial, recipe, dataset, shard)
                return EmbeddingCache(out)
            elif unfinished is None:  # else an interrupted overwrite, which resume finishes
                raise CacheError(f"{out} holds {difference}; choose another `out`, or pass `overwrite` to replace "
                                 "it")
    if unfinished is None:
        return EmbeddingCache.create(out, metadata, dim=dim, dtype=options.dtype, recipe=recipe, dataset=dataset,
                                     shard=shard)
    with _open_cache(unfinished, "is left from an interrupted extraction and cannot be read",
                     "pass `overwrite` to start over") as cache:
        progress = f"{cache.rows_written}/{cache.n_rows} rows"
        difference = _difference(cache, recipe, dataset, shard)
        if difference:
            raise CacheError(f"{unfinished} holds an interrupted extraction ({progress}) of {difference}; pass "
                             "`overwrite` to start over with this one, or choose another `out`")
        if unfinished == out and cache.rows_written == cache.n_rows and cache.skipped_ids:
            raise CacheError(f"{out} was left incomplete by an older embedcache after all its rows were written, "
                             "perhaps while it was dropping skipped rows in place, so its rows cannot be trusted; "
                             "pass `overwrite` to extract it again")
        if not options.resume:
            raise CacheError(f"{unfinished} holds an interrupted extraction ({progress}); pass `resume` to continue "
                             "it, or `overwrite` to start over")
    return EmbeddingCache(unfinished, "r+")


def _remove_finished_partial(partial: Path, recipe: dict, dataset: dict, shard: dict | None) -> None:
    """Delete `<out>.partial` when it holds the same extraction as the complete `out`: what a run killed
    after publishing its cache, before removing its rows file, leaves behind."""
    try:
        with EmbeddingCache(partial) as leftover:
            finished = _difference(leftover, recipe, dataset, shard) is None
    except CacheError:
        return
    if finished:
        partial.unlink(missing_ok=True)


def cache_recipe(backbone, options: ExtractOptions) -> dict:
    """The recipe a cache extracted with `options` records (its amp resolved for the device they name)."""
    return backbone.recipe(options.dtype, resolve_amp(options.amp, resolve_device(options.device))).to_dict()


def extract(dataset: DatasetAdapter, backbone: Backbone, out: str | Path, options: ExtractOptions | None = None,
            progress: Progress | None = None) -> ExtractResult:
    """Run `backbone` over `dataset` (or one shard of it) and write the features to the cache `out`.

    Rows are written in dataset order to `<out>.partial`, which becomes `out` in one rename once it
    is complete (see `EmbeddingCache.create`). With `resume`, an interrupted extraction with the same
    recipe, dataset and shard continues at its last written row, and a complete `out` is kept as it
    is; with `overwrite`, an existing `out` is replaced once the new cache is complete. A bad example
    (missing or unreadable file) stops the run with an error naming it, unless `skip_bad`, which
    records and drops it. Every option is checked before anything is written; a write the OS refuses
    (disk full) stops with an error that says how many rows are saved for `resume`.
    """
    options = options or ExtractOptions()
    started = time.perf_counter()
    out = Path(out)
    if options.batch_size < 1:
        raise ConfigError("must be at least 1", param="batch_size")
    if options.num_workers is not None and options.num_workers < 0:
        raise ConfigError("must be 0 or more", param="num_workers")
    if options.resume and options.overwrite:
        raise ConfigError("`resume` continues `out` and `overwrite` starts it again: pass one of them")
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give the cache a file name such as {out / 'cache.h5'}", param="out")
    if out.name.endswith(PARTIAL_SUFFIX):
        raise ConfigError(f"{out}: names ending in {PARTIAL_SUFFIX} are for unfinished caches; choose another",
                          param="out")
    device = resolve_device(options.device)
    amp = resolve_amp(options.amp, device)
    index, count = options.shard
    rows = shard_range(len(dataset.metadata), index, count)
    if not len(rows):
        raise ConfigError(f"{index}/{count} is empty: the dataset has only {len(dataset.metadata)} rows", param="shard")
    if not options.skip_bad:
        missing = [i for i in dataset.missing_files() if i in rows]
        if missing:
            raise DatasetError(f"{len(missing)} image file(s) not found, e.g. {dataset.location(missing[0])}; "
                               "fix the paths or pass `skip_bad` to leave them out")
    recipe = backbone.recipe(options.dtype, amp).to_dict()  # = cache_recipe(backbone, options), device resolved once
    shard = None if count == 1 else {"index": index, "count": count, "start": rows.start, "stop": rows.stop,
                                     "total": len(dataset.metadata)}
    cache = _open_output(out, dataset.metadata.take(np.arange(rows.start, rows.stop)), backbone.num_features,
                         recipe, dataset.describe(), shard, options)
    with cache:
        done = cache.rows_written
        already_complete = cache.target is None
        try:
            if not already_complete:
                if not cache.complete:
                    _run(dataset, backbone, cache, rows[done:], device, amp, options, progress, done, len(rows))
                cache.finalize()
        except CacheWriteError as e:
            raise CacheWriteError(f"{e}, then rerun with `resume` to continue") from None
        return ExtractResult(path=out, rows=cache.n_rows, resumed_from=done, already_complete=already_complete,
                             skipped=list(zip(cache.skipped_ids, cache.skipped_errors)),
                             seconds=time.perf_counter() - started)


def _run(dataset: DatasetAdapter, backbone: Backbone, cache: EmbeddingCache, rows: range, device: torch.device,
         amp: str | None, options: ExtractOptions, progress: Progress | None, done: int, total: int) -> None:
    loader = example_loader(dataset, backbone.transform, backbone.collate, rows, options.batch_size,
                            options.num_workers, pin_memory=device.type == "cuda")
    channels_last = options.channels_last
    if channels_last is None:
        channels_last = device.type == "cuda" and backbone.modality == "image"
    model = backbone.model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.bfloat16), enabled=amp is not None)
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
                                   "and rerun with `resume`, or pass `skip_bad` to leave bad examples out")
            cache.append(features, skipped=errors)
            position += size
            if progress:
                progress(done + position, total)
