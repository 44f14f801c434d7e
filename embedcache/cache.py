"""EmbeddingCache: the HDF5 file that holds one embedding row per example (schema version 1).

Layout (see DESIGN.md): `/embeddings [N, D]` float16|float32, row-chunked; `/ids` utf-8;
`/label` int64 (-1 unknown, attr `names` when known); `/split` int8 (attr `names`);
`/groups/<name>` int64 (attr `names`). Root attrs: `schema_version`, `embedcache_version`,
`recipe` (JSON), `recipe_fingerprint`, `dataset` (JSON), `complete`, `rows_written`, `versions`
(JSON), and `shard` (JSON) for a shard of a larger extraction. Examples that could not be read
and were skipped on request are listed in `/skipped/ids` and `/skipped/errors`.

Writing is in order: rows are preallocated from the metadata, `append` writes the next rows and
then advances the `rows_written` attribute after a flush, so a killed writer leaves a file that
resumes at its last flushed row. `complete` is set only by `finalize`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import h5py
import numpy as np

import embedcache
from embedcache.errors import CacheError, DatasetError
from embedcache.metadata import Metadata
from embedcache.recipe import canonical_json, recipe_difference, recipe_fingerprint

SCHEMA_VERSION = 1
EMBEDDING_DTYPES = ("float16", "float32")
_STR = h5py.string_dtype("utf-8")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
#: Bytes per HDF5 chunk of the embeddings (about 1 MiB) and per block when iterating (about 64 MiB).
_CHUNK_BYTES = 1 << 20
_BLOCK_BYTES = 1 << 26


def library_versions() -> dict:
    """Versions of the libraries that shape the numbers, recorded in every cache and run."""
    import importlib.metadata as md

    versions = {"embedcache": embedcache.__version__}
    for name in ("torch", "torchvision", "timm", "transformers", "numpy", "h5py"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def _names_attr(names: Sequence[str]) -> np.ndarray:
    return np.array(list(names), dtype=_STR)


class EmbeddingCache:
    """Read (and, when created or opened with mode "r+", write) one HDF5 embedding cache."""

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"{self.path}: no such cache file")
        try:
            self._file = h5py.File(self.path, mode)
        except OSError as e:
            raise CacheError(f"{self.path}: cannot open as HDF5 ({e})") from None
        version = self._file.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            self._file.close()
            found = "no schema_version (not an embedcache file?)" if version is None else f"schema version {version}"
            raise CacheError(f"{self.path}: {found}; this embedcache reads version {SCHEMA_VERSION}")
        self._metadata: Metadata | None = None

    # ------------------------------------------------------------------ creation / writing
    @classmethod
    def create(
        cls,
        path: str | Path,
        metadata: Metadata,
        *,
        dim: int,
        dtype: str,
        recipe: Mapping,
        dataset: Mapping,
        shard: Mapping | None = None,
        overwrite: bool = False,
    ) -> "EmbeddingCache":
        """Create an empty cache for `metadata`'s rows; refuses to replace a file unless `overwrite`."""
        path = Path(path)
        if dtype not in EMBEDDING_DTYPES:
            raise CacheError(f"storage dtype must be one of {EMBEDDING_DTYPES}, got {dtype!r}")
        if path.exists() and not overwrite:
            raise CacheError(f"{path} already exists; pass --overwrite to replace it")
        metadata.validate(str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        n = len(metadata)
        itemsize = np.dtype(dtype).itemsize
        chunk_rows = max(1, min(max(n, 1), _CHUNK_BYTES // (dim * itemsize)))
        meta_chunk = (min(max(n, 1), 1 << 16),)
        with h5py.File(path, "w") as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["embedcache_version"] = embedcache.__version__
            f.attrs["recipe"] = canonical_json(dict(recipe))
            f.attrs["recipe_fingerprint"] = recipe_fingerprint(recipe)
            f.attrs["dataset"] = canonical_json(dict(dataset))
            f.attrs["versions"] = canonical_json(library_versions())
            if shard is not None:
                f.attrs["shard"] = canonical_json(dict(shard))
            f.attrs["complete"] = False
            f.attrs["rows_written"] = 0
            f.create_dataset(
                "embeddings", shape=(n, dim), dtype=dtype, chunks=(chunk_rows, dim), maxshape=(None, dim)
            )
            f.create_dataset("ids", data=metadata.ids.astype(str).astype(object), dtype=_STR,
                             chunks=meta_chunk, maxshape=(None,))
            label = f.create_dataset("label", data=metadata.label, chunks=meta_chunk, maxshape=(None,))
            if metadata.label_names is not None:
                label.attrs["names"] = _names_attr(metadata.label_names)
            split = f.create_dataset("split", data=metadata.split, chunks=meta_chunk, maxshape=(None,))
            split.attrs["names"] = _names_attr(metadata.split_names)
            groups = f.create_group("groups")
            for name, codes in metadata.groups.items():
                ds = groups.create_dataset(name, data=codes, chunks=meta_chunk, maxshape=(None,))
                ds.attrs["names"] = _names_attr(metadata.group_names[name])
        return cls(path, "r+")

    @classmethod
    def write(
        cls,
        path: str | Path,
        embeddings: np.ndarray,
        metadata: Metadata,
        *,
        recipe: Mapping,
        dataset: Mapping | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write a complete cache from in-memory embeddings (your own features, or tests' synthetic ones)."""
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or len(embeddings) != len(metadata):
            raise CacheError(f"embeddings of shape {embeddings.shape} do not match {len(metadata)} metadata rows")
        dtype = recipe.get("dtype") or str(embeddings.dtype)
        if dataset is None:  # fingerprint the content, as extraction does with the dataset's manifest
            digest = hashlib.sha256(metadata.fingerprint().encode())
            digest.update(np.ascontiguousarray(embeddings).tobytes())
            dataset = {"name": "in-memory", "rows": len(metadata), "manifest_sha256": digest.hexdigest()}
        with cls.create(path, metadata, dim=embeddings.shape[1], dtype=dtype, recipe=recipe,
                        dataset=dataset, overwrite=overwrite) as cache:
            for start in range(0, len(embeddings), cache.block_rows):
                cache.append(embeddings[start:start + cache.block_rows])
            cache.finalize()
        return Path(path)

    def append(self, embeddings: np.ndarray, skipped: Mapping[int, str] | None = None) -> None:
        """Write the next rows.

        `embeddings` holds the rows that were computed; `skipped` maps offsets within this block
        (of len(embeddings) + len(skipped) rows) to the reason they could not be. Skipped rows are
        dropped by `finalize`.
        """
        skipped = dict(skipped or {})
        embeddings = np.asarray(embeddings)
        start = self.rows_written
        count = len(embeddings) + len(skipped)
        ds = self._file["embeddings"]
        if start + count > ds.shape[0]:
            raise CacheError(f"{self.path}: writing rows {start}..{start + count} past the end ({ds.shape[0]})")
        if embeddings.ndim != 2 or embeddings.shape[1] != ds.shape[1]:
            raise CacheError(f"{self.path}: rows of width {embeddings.shape[1:]} do not fit dim {ds.shape[1]}")
        if ds.dtype == np.float16 and embeddings.size and np.abs(embeddings).max() > _FLOAT16_MAX:
            raise CacheError(f"{self.path}: feature values exceed the float16 range; extract with --dtype float32")
        block = np.zeros((count, ds.shape[1]), dtype=ds.dtype)
        keep = np.setdiff1d(np.arange(count), np.fromiter(skipped, dtype=np.int64, count=len(skipped)))
        block[keep] = embeddings
        ds[start:start + count] = block
        if skipped:
            ids = self._file["ids"]
            offsets = sorted(skipped)
            self._append_strings("skipped/ids", [ids[start + o].decode() for o in offsets])
            self._append_strings("skipped/errors", [skipped[o] for o in offsets])
        self._file.flush()
        self._file.attrs["rows_written"] = start + count
        self._file.flush()

    def _append_strings(self, name: str, values: list[str]) -> None:
        if name not in self._file:
            self._file.create_dataset(name, shape=(0,), dtype=_STR, maxshape=(None,), chunks=(1024,))
        ds = self._file[name]
        ds.resize((ds.shape[0] + len(values),))
        ds[-len(values):] = values

    def finalize(self) -> None:
        """Drop skipped rows and mark the cache complete; call once every row has been appended."""
        n = self._file["embeddings"].shape[0]
        if self.rows_written != n:
            raise CacheError(f"{self.path}: only {self.rows_written} of {n} rows written")
        skipped_ids = set(self.skipped_ids)
        if skipped_ids:
            keep = np.flatnonzero([i not in skipped_ids for i in self._file["ids"].asstr()[()]])
            self._compact(keep)
            self._file.attrs["rows_written"] = len(keep)
        self._file.attrs["complete"] = True
        self._file.flush()
        self._metadata = None

    def _compact(self, keep: np.ndarray) -> None:
        """Move the kept rows to the front of every row-aligned dataset, in order, then shrink."""
        datasets = [self._file[name] for name in ("embeddings", "ids", "label", "split")]
        datasets += list(self._file["groups"].values())
        for ds in datasets:
            for start in range(0, len(keep), self.block_rows):
                rows = keep[start:start + self.block_rows]
                ds[start:start + len(rows)] = ds[int(rows[0]):int(rows[-1]) + 1][rows - rows[0]]
            ds.resize(len(keep), axis=0)

    def _point_at(self, shards: Sequence["EmbeddingCache"], base: Path) -> None:
        """Replace /embeddings by a virtual dataset over the shards' rows (paths relative to `base`)."""
        layout = h5py.VirtualLayout(shape=(self.n_rows, self.dim), dtype=self.dtype)
        start = 0
        for shard in shards:
            source = os.path.relpath(shard.path.resolve(), base.resolve())
            layout[start:start + shard.n_rows] = h5py.VirtualSource(source, "embeddings", shape=(shard.n_rows, shard.dim))
            start += shard.n_rows
        del self._file["embeddings"]
        self._file.create_virtual_dataset("embeddings", layout)

    # ------------------------------------------------------------------ attributes
    def _json_attr(self, name: str):
        value = self._file.attrs.get(name)
        return None if value is None else json.loads(value)

    @property
    def n_rows(self) -> int:
        return int(self._file["embeddings"].shape[0])

    @property
    def dim(self) -> int:
        return int(self._file["embeddings"].shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self._file["embeddings"].dtype

    @property
    def rows_written(self) -> int:
        return int(self._file.attrs["rows_written"])

    @property
    def complete(self) -> bool:
        return bool(self._file.attrs["complete"])

    @property
    def recipe(self) -> dict:
        return self._json_attr("recipe")

    @property
    def fingerprint(self) -> str:
        return str(self._file.attrs["recipe_fingerprint"])

    @property
    def dataset(self) -> dict:
        return self._json_attr("dataset")

    @property
    def shard(self) -> dict | None:
        return self._json_attr("shard")

    @property
    def versions(self) -> dict:
        return self._json_attr("versions") or {}

    @property
    def skipped_ids(self) -> list[str]:
        return list(self._file["skipped/ids"].asstr()[()]) if "skipped/ids" in self._file else []

    @property
    def skipped_errors(self) -> list[str]:
        return list(self._file["skipped/errors"].asstr()[()]) if "skipped/errors" in self._file else []

    @property
    def block_rows(self) -> int:
        """Rows per block when iterating: whole HDF5 chunks adding up to about 64 MiB."""
        ds = self._file["embeddings"]
        chunk = ds.chunks[0] if ds.chunks else 1
        return max(chunk, (_BLOCK_BYTES // max(1, self.dim * self.dtype.itemsize)) // chunk * chunk)

    # ------------------------------------------------------------------ reading
    def require_complete(self) -> "EmbeddingCache":
        if not self.complete:
            raise CacheError(
                f"{self.path} is not complete ({self.rows_written}/{self.n_rows} rows written); "
                "finish it with `embedcache extract ... --resume`"
            )
        return self

    def metadata(self) -> Metadata:
        """ids, labels, splits and groups of every row (read once, then kept)."""
        if self._metadata is None:
            f = self._file
            label_names = f["label"].attrs.get("names")
            self._metadata = Metadata(
                ids=np.asarray(f["ids"].asstr()[()], dtype=object),
                label=f["label"][()],
                split=f["split"][()],
                split_names=tuple(str(s) for s in f["split"].attrs["names"]),
                groups={k: ds[()] for k, ds in f["groups"].items()},
                group_names={k: tuple(str(s) for s in ds.attrs["names"]) for k, ds in f["groups"].items()},
                label_names=None if label_names is None else tuple(str(s) for s in label_names),
            )
        return self._metadata

    def embeddings(self, rows: np.ndarray | slice | None = None, dtype: np.dtype | str | None = None) -> np.ndarray:
        """Embedding rows as numpy: all (None), a slice, or any integer index array (any order)."""
        ds = self._file["embeddings"]
        if rows is None or isinstance(rows, slice):
            out = ds[rows if rows is not None else ()]
        else:
            rows = np.asarray(rows, dtype=np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= len(ds)):
                raise CacheError(f"{self.path}: row index out of range 0..{len(ds) - 1}")
            out = np.empty((len(rows), ds.shape[1]), dtype=ds.dtype)
            for positions, block in self._blocks_of(rows):
                out[positions] = block
        return out if dtype is None else out.astype(dtype, copy=False)

    def _blocks_of(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """For rows in any order: (positions in `rows`, their embeddings), one contiguous read per block."""
        ds = self._file["embeddings"]
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        block = self.block_rows
        bounds = np.flatnonzero(np.diff(sorted_rows // block)) + 1
        for part in np.split(np.arange(len(rows)), bounds):
            if not len(part):
                continue
            lo, hi = int(sorted_rows[part[0]]), int(sorted_rows[part[-1]]) + 1
            yield order[part], ds[lo:hi][sorted_rows[part] - lo]

    def iter_chunks(
        self, rows: np.ndarray | None = None, chunk_rows: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (row indices, embeddings) a block at a time, so memory stays bounded whatever N is.

        Without `rows`, blocks are consecutive; with `rows`, they come in ascending row order.
        """
        ds = self._file["embeddings"]
        chunk_rows = chunk_rows or self.block_rows
        if rows is None:
            for start in range(0, len(ds), chunk_rows):
                stop = min(start + chunk_rows, len(ds))
                yield np.arange(start, stop), ds[start:stop]
            return
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        for start in range(0, len(rows), chunk_rows):
            part = rows[start:start + chunk_rows]
            yield part, self.embeddings(part)

    # ------------------------------------------------------------------ checks and summary
    def validate(self, scan_values: bool = True) -> None:
        """Raise CacheError listing every problem found: schema, shapes, ids, codes, recipe, NaN/inf rows."""
        problems: list[str] = []
        f = self._file
        for name in ("embeddings", "ids", "label", "split", "groups"):
            if name not in f:
                problems.append(f"missing /{name}")
        if problems:
            raise CacheError(f"{self.path}: " + "; ".join(problems))
        if f["embeddings"].ndim != 2:
            problems.append(f"/embeddings has shape {f['embeddings'].shape}, expected [N, D]")
        if str(self.dtype) not in EMBEDDING_DTYPES:
            problems.append(f"/embeddings dtype {self.dtype} is not one of {EMBEDDING_DTYPES}")
        try:
            self.metadata().validate(str(self.path))
            if len(self.metadata()) != self.n_rows:
                problems.append(f"{len(self.metadata())} metadata rows for {self.n_rows} embedding rows")
        except DatasetError as e:
            problems.append(str(e).removeprefix(f"{self.path}: "))
        if recipe_fingerprint(self.recipe or {}) != self.fingerprint:
            problems.append("recipe_fingerprint does not match the stored recipe")
        if not self.complete:
            problems.append(f"not complete ({self.rows_written}/{self.n_rows} rows written)")
        if scan_values and not problems:
            bad = [int(r) for rows, block in self.iter_chunks(rows=None)
                   for r in rows[~np.isfinite(block).all(axis=1)]]
            if bad:
                ids = self.metadata().ids[bad[:5]].tolist()
                problems.append(f"{len(bad)} row(s) with NaN/inf values, e.g. ids {ids}")
        if problems:
            raise CacheError(f"{self.path}: " + "; ".join(problems))

    def check_recipe(self, recipe: Mapping) -> None:
        """Raise CacheError if this cache was made with another recipe."""
        other = recipe_fingerprint(recipe)
        if other != self.fingerprint:
            diff = recipe_difference(self.recipe, recipe)
            raise CacheError(
                f"{self.path} holds another recipe (fingerprint {self.fingerprint[:12]}, asked for {other[:12]}): "
                + "; ".join(diff)
            )

    def summary(self) -> dict:
        """A JSON-ready description: what `embedcache info` prints."""
        meta = self.metadata()
        splits = {name: int((meta.split == code).sum()) for code, name in enumerate(meta.split_names)}
        groups = {
            name: {value: int((codes == code).sum()) for code, value in enumerate(meta.group_names[name])}
            for name, codes in meta.groups.items()
        }
        labels, counts = np.unique(meta.label, return_counts=True)
        names = meta.label_names
        label_counts = {
            (names[c] if names is not None and c >= 0 else str(c)): int(n) for c, n in zip(labels.tolist(), counts)
        }
        summary = {
            "path": str(self.path),
            "rows": self.n_rows,
            "dim": self.dim,
            "dtype": str(self.dtype),
            "complete": self.complete,
            "rows_written": self.rows_written,
            "size_bytes": self.path.stat().st_size,
            "splits": splits,
            "labels": label_counts,
            "groups": groups,
            "recipe_fingerprint": self.fingerprint,
            "recipe": self.recipe,
            "dataset": self.dataset,
            "versions": self.versions,
            "schema_version": SCHEMA_VERSION,
        }
        if self.shard is not None:
            summary["shard"] = self.shard
        if self.skipped_ids:
            summary["skipped"] = [{"id": i, "error": e} for i, e in zip(self.skipped_ids, self.skipped_errors)]
        return summary

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{self.rows_written}/{self.n_rows} rows"
        return f"EmbeddingCache({str(self.path)!r}, {self.n_rows}x{self.dim} {self.dtype}, {state})"


def merge_shards(paths: Sequence[str | Path], out: str | Path, *, virtual: bool = False,
                 overwrite: bool = False) -> Path:
    """Join the complete shards of one extraction into one cache, in row order.

    The shards must share recipe fingerprint and dataset manifest, and their slices must tile the
    dataset exactly. `virtual` writes an HDF5 virtual dataset that points at the shard files
    (by paths relative to `out`; keep them together) instead of copying the embeddings.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise CacheError(f"{out} already exists; pass --overwrite to replace it")
    if not paths:
        raise CacheError("no shard files given")
    shards = [EmbeddingCache(p) for p in paths]
    try:
        first = shards[0]
        for shard in shards:
            shard.require_complete()
            if shard.shard is None:
                raise CacheError(f"{shard.path} is not a shard (extracted without --shard)")
            if shard.fingerprint != first.fingerprint:
                raise CacheError(f"{shard.path} has recipe {shard.fingerprint[:12]}, {first.path} has "
                                 f"{first.fingerprint[:12]}: " + "; ".join(recipe_difference(first.recipe, shard.recipe)))
            if shard.dataset.get("manifest_sha256") != first.dataset.get("manifest_sha256"):
                raise CacheError(f"{shard.path} and {first.path} come from different datasets")
            if shard.dtype != first.dtype:
                raise CacheError(f"{shard.path} stores {shard.dtype}, {first.path} stores {first.dtype}")
        shards.sort(key=lambda c: c.shard["index"])
        count = first.shard["count"]
        indices = [c.shard["index"] for c in shards]
        if indices != list(range(count)):
            missing = sorted(set(range(count)) - set(indices))
            raise CacheError(f"need each of the {count} shards exactly once; got indices {indices}"
                             + (f", missing {missing}" if missing else ""))
        metas = [c.metadata() for c in shards]
        merged = Metadata(
            ids=np.concatenate([m.ids for m in metas]),
            label=np.concatenate([m.label for m in metas]),
            split=np.concatenate([m.split for m in metas]),
            split_names=metas[0].split_names,
            groups={k: np.concatenate([m.groups[k] for m in metas]) for k in metas[0].groups},
            group_names=metas[0].group_names,
            label_names=metas[0].label_names,
        )
        tmp = out.with_name(out.name + ".merging")
        with EmbeddingCache.create(tmp, merged, dim=first.dim, dtype=str(first.dtype), recipe=first.recipe,
                                   dataset=first.dataset, overwrite=True) as target:
            if virtual:
                target._point_at(shards, out.parent)
            else:
                for shard in shards:
                    for _, block in shard.iter_chunks():
                        target.append(block)
            skipped = [(i, e) for c in shards for i, e in zip(c.skipped_ids, c.skipped_errors)]
            if skipped:
                target._append_strings("skipped/ids", [i for i, _ in skipped])
                target._append_strings("skipped/errors", [e for _, e in skipped])
            target._file.attrs["rows_written"] = target.n_rows
            target.finalize()
        tmp.replace(out)
    finally:
        for shard in shards:
            shard.close()
    return out
