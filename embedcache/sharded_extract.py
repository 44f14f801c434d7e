"""One extraction as N shard tasks on an executor (`extract --executor ray --shards N`), then one merge.

Each task opens the dataset and the backbone itself and extracts one contiguous slice into
`<out stem>.shard<I>of<N><suffix>` beside `out` (`extract.extract` with `shard=(I, N)`), always
resuming what an earlier attempt of the same slice wrote, so a task started again after its worker
died continues where it stopped. When every slice is complete, `cache.merge_shards` joins them into
`out` (checked, checksummed) and the shard files are removed.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from embedcache.cache import EmbeddingCache, merge_shards
from embedcache.errors import CacheError, ConfigError
from embedcache.executors import Executor, Task
from embedcache.extract import ExtractOptions, ExtractResult, cache_recipe, extract, shard_range
from embedcache.recipe import recipe_fingerprint
from embedcache.specs import DataSpec, ModelSpec


@dataclasses.dataclass(frozen=True)
class ExtractionSpec:
    """What to extract, as `embedcache extract` takes it: small enough to send to any worker."""

    data: DataSpec
    model: ModelSpec
    resolution: int | None = None
    options: ExtractOptions = dataclasses.field(default_factory=ExtractOptions)

    def open(self):
        """(dataset adapter, backbone), made in the calling process."""
        return self.data.create(), self.model.create(resolution=self.resolution)


def shard_path(out: Path, index: int, count: int) -> Path:
    return out.with_name(f"{out.stem}.shard{index}of{count}{out.suffix}")


def extract_shard(spec: ExtractionSpec, index: int, count: int, out: str) -> str:
    """Extract (or finish) slice `index` of `count` into its shard file; its path."""
    data, model = spec.open()
    overwrite = spec.options.overwrite
    options = dataclasses.replace(spec.options, shard=(index, count), resume=not overwrite, overwrite=overwrite)
    return str(extract(data, model, shard_path(Path(out), index, count), options).path)


def extract_sharded(spec: ExtractionSpec, out: str | Path, count: int, executor: Executor,
                    progress: Callable[[int, int], None] | None = None) -> ExtractResult:
    """Extract `count` slices as tasks on `executor`, then merge them into `out` (see the module
    docstring). Dataset, backbone and `out` are checked here before any task starts."""
    started = time.perf_counter()
    out = Path(out).resolve()
    if count < 2:
        raise ConfigError(f"{count}: give 2 or more (one extraction needs no shards)", param="shards")
    if spec.options.shard != (0, 1):
        raise ConfigError("`shard` extracts one slice here and `shards` sends all of them to the executor: give "
                          "one", param="shards")
    if spec.options.resume and spec.options.overwrite:
        raise ConfigError("`resume` continues `out` and `overwrite` starts it again: pass one of them", param="resume")
    data, model = spec.open()
    rows = len(data.metadata)
    for index in range(count):
        if not len(shard_range(rows, index, count)):
            raise ConfigError(f"{count}: the dataset has only {rows} rows; give at most {rows}", param="shards")
    if out.exists() and not spec.options.overwrite:
        fingerprint = recipe_fingerprint(cache_recipe(model, spec.options))
        with EmbeddingCache(out) as existing:
            same = existing.complete and existing.fingerprint == fingerprint and \
                existing.dataset.get("manifest_sha256") == data.describe()["manifest_sha256"]
            if same and spec.options.resume:
                return ExtractResult(out, existing.n_rows, existing.n_rows, True, [], time.perf_counter() - started)
        raise CacheError(f"{out} already exists{' with this recipe and dataset' if same else ''}; pass `overwrite` to "
                         "replace it once the new cache is merged" + (", or `resume` to keep it" if same else ""),
                         param="out")
    del data, model
    tasks = [Task(extract_shard, (spec, index, count, str(out)), gpus=int(spec.options.device != "cpu"))
             for index in range(count)]
    parts: list[Path] = []

    def finished(task: Task, path: str) -> None:
        parts.append(Path(path))
        if progress:
            progress(len(parts), count)

    if progress:
        progress(0, count)
    executor.run(tasks, finished)
    merge_shards(sorted(parts), out, overwrite=spec.options.overwrite)
    skipped = []
    for part in parts:
        with EmbeddingCache(part) as shard:
            skipped += list(zip(shard.skipped_ids, shard.skipped_errors))
        part.unlink()
    with EmbeddingCache(out) as merged:
        return ExtractResult(out, merged.n_rows, 0, False, skipped, time.perf_counter() - started)
