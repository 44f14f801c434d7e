"""EmbeddingCache: the HDF5 file that holds one embedding row per example (schema version 1).

Layout (see DESIGN.md): `/embeddings [N, D]` float16|float32, row-chunked; `/ids` utf-8;
`/label` int64 (-1 unknown, attr `names` when known); `/split` int8 (attr `names`);
`/groups/<name>` int64 (attr `names`). Root attrs: `schema_version`, `embedcache_version`,
`recipe` (JSON), `recipe_fingerprint`, `dataset` (JSON object), `complete`, `versions` (JSON
object); `rows_written` and, for a shard of a larger extraction, `shard` (JSON) are optional.
Examples that could not be read and were skipped on request are listed in `/skipped/ids` and
`/skipped/errors`. Opening a file checks that the required parts are there (`NotACacheError`
names what is missing); anything else, the recipe's shape included, is up to the writer.

Writing never happens at the final path. `create(out)` writes `<out>.partial`: rows are
preallocated from the metadata and `append` writes the next rows. Whenever an append fills an HDF5
chunk (and on `close`), the rows are flushed and then `rows_written` advances in a second flush, so
a killed writer leaves a partial file that resumes after its last saved append, having lost at most
one chunk's rows (about 1 MiB); flushing whole chunks writes each chunk (and its checksum) about once.
`finalize` drops skipped rows (by copying the kept ones into a fresh file), marks the file
complete, and moves it onto `out` with one atomic rename. So a file at `out` is always complete,
an existing `out` stays as it was until its replacement is done, and a kill at any step leaves
either the old state or the new one.

New caches store an HDF5 Fletcher-32 checksum with every chunk of every dataset, which HDF5
verifies on each read; `validate` reads every byte and names the dataset and rows of any chunk
whose checksum does not match. Virtual datasets (`merge --virtual`) cannot carry filters: their
rows are checked in the shard files they point at.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

import h5py
import numpy as np

import embedcache
from embedcache.errors import CacheError, ConfigError, DatasetError
from embedcache.faults import crash_point
from embedcache.metadata import Metadata
from embedcache.recipe import canonical_json, recipe_difference, recipe_fingerprint, vectors_digest
from embedcache.versions import library_versions

SCHEMA_VERSION = 1
EMBEDDING_DTYPES = ("float16", "float32")
#: Root attributes every cache must have (DESIGN.md's cache table); `rows_written` and `shard` are optional.
REQUIRED_ATTRS = ("schema_version", "embedcache_version", "recipe", "recipe_fingerprint", "dataset", "complete",
                  "versions")
#: Datasets with one row per example, besides those under /groups.
ROW_DATASETS = ("embeddings", "ids", "label", "split")
PARTIAL_SUFFIX = ".partial"
_STR = h5py.string_dtype("utf-8")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
#: Bytes per HDF5 chunk (about 1 MiB) and per block when iterating (about 64 MiB).
_CHUNK_BYTES = 1 << 20
_BLOCK_BYTES = 1 << 26


class NotACacheError(CacheError):
    """The file is not an embedding cache of this schema: not HDF5, another schema version, or parts missing."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


class CacheWriteError(CacheError):
    """The operating system refused a write (disk full, quota, file size limit, read-only folder).

    Nothing written after the last flush reaches the file, which stays resumable (see `_WriteGuard`)."""


def partial_path(out: str | Path) -> Path:
    """Where the cache that will be `out` is written until it is complete: `<out>.partial`."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def _compacting_path(out: Path) -> Path:
    return out.with_name(out.name + ".compacting")


def _names_attr(names: Sequence[str]) -> np.ndarray:
    return np.array(list(names), dtype=_STR)


def _fixed_strings(values: Sequence[str]) -> np.ndarray:
    """utf-8 bytes of equal width: HDF5 can checksum fixed-width strings, not variable-length ones."""
    encoded = [str(v).encode("utf-8") for v in values]
    return np.array(encoded, dtype=h5py.string_dtype("utf-8", max(1, max(map(len, encoded), default=1))))


def _chunk_rows(n: int, row_bytes: int) -> int:
    return max(1, min(max(n, 1), _CHUNK_BYTES // max(1, row_bytes)))


def _write_strings(f: h5py.File, name: str, values: Sequence[str]) -> None:
    """A fixed-width, checksummed utf-8 string dataset; gzip keeps the padding of short strings cheap."""
    data = _fixed_strings(values)
    f.create_dataset(name, data=data, chunks=(_chunk_rows(len(data), data.itemsize),), compression="gzip",
                     compression_opts=1, fletcher32=True)


def _write_layout(f: h5py.File, metadata: Metadata, dim: int, dtype: str, attrs: Mapping) -> None:
    """Root attributes, the metadata datasets, and an empty /embeddings; every dataset chunk-checksummed."""
    for key, value in attrs.items():
        f.attrs[key] = value
    n = len(metadata)
    f.create_dataset("embeddings", shape=(n, dim), dtype=dtype,
                     chunks=(_chunk_rows(n, dim * np.dtype(dtype).itemsize), dim), fletcher32=True)
    _write_strings(f, "ids", metadata.ids)

    def column(name: str, data: np.ndarray) -> h5py.Dataset:
        return f.create_dataset(name, data=data, chunks=(_chunk_rows(n, data.itemsize),), fletcher32=True)

    label = column("label", metadata.label)
    if metadata.label_names is not None:
        label.attrs["names"] = _names_attr(metadata.label_names)
    column("split", metadata.split).attrs["names"] = _names_attr(metadata.split_names)
    f.create_group("groups")
    for name, codes in metadata.groups.items():
        column(f"groups/{name}", codes).attrs["names"] = _names_attr(metadata.group_names[name])


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _schema_problems(f: h5py.File) -> list[str]:
    """What a file lacks to be a schema-1 cache: required datasets and attributes, their shapes and types."""
    problems = []
    missing = [name for name in REQUIRED_ATTRS if name not in f.attrs]
    if missing:
        problems.append("root attribute(s) " + ", ".join(missing) + " missing")
    for name, kind in (("recipe", None), ("dataset", dict), ("versions", dict)):
        if name in f.attrs:
            try:
                value = json.loads(_text(f.attrs[name]))
            except (ValueError, TypeError):
                problems.append(f"root attribute {name} is not JSON")
                continue
            if kind is dict and not isinstance(value, dict):
                problems.append(f"root attribute {name} is not a JSON object")
    if "complete" in f.attrs and np.asarray(f.attrs["complete"]).dtype.kind not in "biu":
        problems.append("root attribute complete is not a boolean")
    absent = [f"/{name}" for name in (*ROW_DATASETS, "groups") if name not in f]
    if absent:
        problems.append(", ".join(absent) + " missing")
    groups = f.get("groups")
    if groups is not None and not isinstance(groups, h5py.Group):
        problems.append("/groups is not a group")
    group_columns = [f"groups/{k}" for k in groups] if isinstance(groups, h5py.Group) else []
    rows = {}
    for name in (*ROW_DATASETS, *group_columns):
        obj = f.get(name)
        if obj is None:
            continue
        if not isinstance(obj, h5py.Dataset):
            problems.append(f"/{name} is not a dataset")
            continue
        want_ndim = 2 if name == "embeddings" else 1
        if obj.ndim != want_ndim:
            problems.append(f"/{name} has shape {obj.shape}, expected {want_ndim} dimension(s)")
            continue
        rows[name] = obj.shape[0]
        if name == "ids" and h5py.check_string_dtype(obj.dtype) is None:
            problems.append("/ids does not hold strings")
        if name in ("label", "split") or name.startswith("groups/"):
            if obj.dtype.kind not in "iu":
                problems.append(f"/{name} does not hold integers")
            if name != "label" and "names" not in obj.attrs:
                problems.append(f"/{name} has no attribute names")
    if len(set(rows.values())) > 1:
        problems.append("datasets of different lengths: " + ", ".join(f"/{k} {v}" for k, v in rows.items()))
    return problems


def _reason(error: OSError) -> str:
    return os.strerror(error.errno) if error.errno else str(error)


def _remedy(error: OSError, folder: Path) -> str:
    """What the user can do about a refused write."""
    return {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space or raise your disk quota",
        errno.EFBIG: "raise the file size limit (ulimit -f) or write to another file system",
        errno.EACCES: f"make {folder} writable",
        errno.EPERM: f"make {folder} writable",
        errno.EROFS: f"write to a file system that is not read-only, or remount {folder} read-write",
    }.get(error.errno, "fix the cause")


def _cannot_write_in(folder: Path, error: OSError) -> CacheError:
    folder = folder.absolute()
    return CacheError(f"{folder}: cannot write here ({_reason(error)}); choose another `out` or "
                      f"{_remedy(error, folder)}")


def _fsync(path: Path) -> None:
    """Flush a file's bytes to the disk, so a rename that publishes it never publishes missing data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _scan(ds: h5py.Dataset, label: str, offset: int, finite: bool, where: str = "") -> tuple[list[str], np.ndarray]:
    """Read every row of `ds` in blocks of about 64 MiB; where a block fails, read it chunk by chunk
    (HDF5 verifies each chunk's checksum on read). Returns the failing ranges as
    "<label> rows a-b<where>: ..." with rows counted from `offset`, and, when `finite`, the rows
    (from `offset`) holding NaN or inf."""
    if ds.ndim == 0:
        try:
            ds[()]
            return [], np.zeros(0, dtype=np.int64)
        except OSError as e:
            return [f"{label}{where}: unreadable ({e})"], np.zeros(0, dtype=np.int64)
    n = ds.shape[0]
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    chunk = ds.chunks[0] if ds.chunks else _chunk_rows(n, row_bytes)
    step = max(chunk, (_BLOCK_BYTES // row_bytes) // chunk * chunk)
    bad, nonfinite = [], []
    for start in range(0, n, step):
        stop = min(start + step, n)
        try:
            block = ds[start:stop]
        except OSError:
            for lo in range(start, stop, chunk):
                hi = min(lo + chunk, stop)
                try:
                    ds[lo:hi]
                except OSError as e:
                    what = ("corrupted bytes (checksum mismatch)" if ds.fletcher32 and "filter" in str(e)
                            else f"unreadable ({e})")
                    bad.append(f"{label} rows {offset + lo}-{offset + hi - 1}{where}: {what}")
            continue
        if finite:
            nonfinite.extend(offset + start + np.flatnonzero(~np.isfinite(block).all(axis=1)))
    return bad, np.asarray(nonfinite, dtype=np.int64)


class _WriteGuard(io.RawIOBase):
    """The file object under every HDF5 file we write (h5py's `fileobj` driver).

    I/O passes through to the OS until a write fails (disk full, quota, file size limit). That error
    is kept in `error` and the write, like every later one, is dropped while HDF5 is told it
    succeeded. HDF5 must not see the failure: when a flush fails inside a dataset's close it leaves a
    half-closed dataset behind and then crashes on it (a segmentation fault in H5D__flush_all_cb when
    the file is closed, at interpreter exit at the latest). Dropping the writes lets HDF5 close
    normally and keeps the file as its last successful flush left it, as a kill -9 would; callers
    check `error` after each step and report it.
    """

    def __init__(self, path: Path, create: bool):
        """Open `path` for reading and writing (with `create`, made empty first), locked against other
        writers and readers as HDF5 locks its own files (which this driver does not): the lock is
        taken before anything is truncated."""
        super().__init__()
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise CacheError(f"{path} is open in another process (an extraction writing it?); wait for it "
                                     "to finish or stop it") from None
                except OSError:
                    pass  # a file system without locks: write unlocked, as HDF5 does there
            if create:
                os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        self._raw = open(fd, "r+b", buffering=0)
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readinto(self, buffer) -> int:
        """Fill `buffer` from the current position; past the end of the file with zeros, as HDF5's own
        driver does (HDF5 may read back space whose writes were dropped)."""
        view = memoryview(buffer).cast("B")
        done = self._raw.readinto(view) or 0
        view[done:] = bytes(len(view) - done)
        return len(view)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):  # a write cut short by a full disk is followed by one that fails
                    done += self._raw.write(view[done:])
            except OSError as e:
                self.error = e
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._raw.truncate(size)
            except OSError as e:
                self.error = e
        return self._raw.tell() if size is None else size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_guarded(path: Path, mode: str) -> tuple[_WriteGuard, h5py.File]:
    """An HDF5 file opened for writing ("w" creates or truncates, "r+" updates) through a `_WriteGuard`."""
    guard = _WriteGuard(path, create=mode == "w")
    try:  # room for the two chunks an append may straddle, so each is written once
        return guard, h5py.File(guard, mode, rdcc_nbytes=4 * _CHUNK_BYTES)
    except BaseException:
        guard.close()
        raise


def _close_guarded(guard: _WriteGuard, f: h5py.File) -> OSError | None:
    """Close a guarded HDF5 file; returns the OS error of a refused write, if any (see `_WriteGuard`)."""
    try:
        if f.id.valid:
            f.close()
    finally:
        guard.close()
    return guard.error


class EmbeddingCache:
    """Read one HDF5 embedding cache; or, from `create` or mode "r+" on an unfinished file, write it."""

    def __init__(self, path: str | Path, mode: str = "r"):
        """Open `path` for reading ("r"), or an unfinished `<out>.partial` (or a file an older embedcache
        left incomplete at `out` itself) for appending and finalising ("r+")."""
        self._open(Path(path), mode)

    def _open(self, path: Path, mode: str) -> None:
        """Open `path` (see `__init__`); `finalize` reopens the finished cache for reading with it."""
        self.path = path
        self._guard: _WriteGuard | None = None
        self._metadata: Metadata | None = None
        #: Where `finalize` puts the file (writers only).
        self.target: Path | None = None
        if not path.is_file():
            unfinished = partial_path(path)
            hint = (f" ({unfinished} holds an unfinished write of it: `embedcache extract ... --resume` finishes it)"
                    if unfinished.is_file() else "")
            raise CacheError(f"{path}: no such cache file{hint}")
        try:
            if mode == "r":
                self._file = h5py.File(path, "r")
            elif mode == "r+":
                self._guard, self._file = _open_guarded(path, "r+")
                name = path.name
                self.target = path.with_name(name.removesuffix(PARTIAL_SUFFIX)) if name.endswith(
                    PARTIAL_SUFFIX) else path
            else:
                raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        except OSError as e:
            if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                doing = "reading" if mode == "r" else "writing"
                raise CacheError(f"{path}: cannot open it for {doing} ({_reason(e)})") from None
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "lock" in str(e):
                raise CacheError(f"{path} is open in another process (an extraction writing it?); wait for it to "
                                 "finish or stop it") from None
            raise NotACacheError(path, f"cannot open as HDF5 ({e})") from None
        version = self._file.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            self._close_file()
            found = "no schema_version (not an embedcache file?)" if version is None else f"schema version {version}"
            raise NotACacheError(path, f"{found}; this embedcache reads version {SCHEMA_VERSION}")
        try:
            problems = _schema_problems(self._file)
        except (KeyError, OSError, RuntimeError, ValueError) as e:
            problems = [f"unreadable structure ({e})"]
        if problems:
            self._close_file()
            raise NotACacheError(path, f"not a complete schema-{SCHEMA_VERSION} embedding cache: "
                                 + "; ".join(problems))
        missing = [str(file) for file, _, _ in self._virtual_sources() if not file.is_file()]
        if missing:  # HDF5 would read zeros for them, silently
            self._close_file()
            raise CacheError(f"{path}: its virtual /embeddings reads rows from {missing}, which are not there; "
                             "keep the shard files beside the merged cache (or merge without `virtual`)")
        if self._guard is not None:
            #: Rows appended so far; `rows_written` counts those saved.
            self._appended = self.rows_written
            #: /embeddings, kept open while writing: HDF5 drops a dataset's chunk cache when it is closed.
            self._rows = self._file["embeddings"]
            self._drop_unsaved_skipped()

    # ------------------------------------------------------------------ creation / writing
    @classmethod
    def create(
        cls,
        path: str | Path,
        metadata: Metadata,
        *,
        dim: int,
        dtype: str,
        recipe: Any,
        dataset: Mapping,
        shard: Mapping | None = None,
        overwrite: bool = False,
    ) -> "EmbeddingCache":
        """Start writing the cache that will be `path`, for `metadata`'s rows, and return it open for `append`.

        The rows go to `<path>.partial`; `finalize` moves the finished file onto `path`. An existing
        `path` is refused, and with `overwrite` kept until then; an unfinished `<path>.partial` is
        refused, and with `overwrite` started over. `recipe` may be any JSON value.
        """
        path = Path(path)
        if dtype not in EMBEDDING_DTYPES:
            raise CacheError(f"storage dtype must be one of {EMBEDDING_DTYPES}, got {dtype!r}")
        if path.is_dir():
            raise CacheError(f"{path} is a folder; give the cache a file name such as {path / 'cache.h5'}")
        if path.name.endswith(PARTIAL_SUFFIX):
            raise CacheError(f"{path}: names ending in {PARTIAL_SUFFIX} are for unfinished writes; choose another")
        if path.exists() and not overwrite:
            raise CacheError(f"{path} already exists; pass `overwrite` to replace it")
        partial = partial_path(path)
        if partial.exists() and not overwrite:
            raise CacheError(f"{partial} holds an unfinished write of {path}; pass `overwrite` to discard it and "
                             "start over")
        metadata.validate(str(path))
        attrs = {
            "schema_version": SCHEMA_VERSION,
            "embedcache_version": embedcache.__version__,
            "recipe": canonical_json(recipe),
            "recipe_fingerprint": recipe_fingerprint(recipe),
            "dataset": canonical_json(dict(dataset)),
            "versions": canonical_json(library_versions()),
            "complete": False,
            "rows_written": 0,
        }
        if shard is not None:
            attrs["shard"] = canonical_json(dict(shard))
        try:
            partial.parent.mkdir(parents=True, exist_ok=True)
            guard, f = _open_guarded(partial, "w")
        except OSError as e:
            raise _cannot_write_in(partial.parent, e) from None
        try:
            _write_layout(f, metadata, dim, dtype, attrs)
        except BaseException:
            _close_guarded(guard, f)
            partial.unlink(missing_ok=True)
            raise
        refused = _close_guarded(guard, f)
        if refused:
            partial.unlink(missing_ok=True)
            raise _cannot_write_in(partial.parent, refused)
        return cls(partial, "r+")

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
        if dataset is None:  # the examples are known by their vectors, as an imported cache's
            content = vectors_digest(embeddings.dtype, *embeddings.shape)
            content.update(np.ascontiguousarray(embeddings, embeddings.dtype.newbyteorder("<")))
            dataset = {"name": "in-memory", "rows": len(metadata),
                       "manifest_sha256": metadata.fingerprint(content.hexdigest())}
        with cls.create(path, metadata, dim=embeddings.shape[1], dtype=dtype, recipe=recipe,
                        dataset=dataset, overwrite=overwrite) as cache:
            for start in range(0, len(embeddings), cache.block_rows):
                cache.append(embeddings[start:start + cache.block_rows])
            cache.finalize()
        return Path(path)

    def _require_writer(self) -> None:
        if self._guard is None or self.target is None:
            raise CacheError(f"{self.path} is open for reading only")

    @contextlib.contextmanager
    def _writing(self, rows_saved: int) -> Iterator[None]:
        """Report a write the OS refused inside the block as CacheWriteError, saying how many rows the
        file keeps, and close the file (nothing more reaches it; see `_WriteGuard`)."""
        yield
        error = self._guard.error
        if error is not None:
            total = self.n_rows
            self._close_file()
            raise CacheWriteError(f"{self.path}: cannot write ({_reason(error)}): {rows_saved} of {total} rows are "
                                  f"saved in it; {_remedy(error, self.path.parent)}")

    def append(self, embeddings: np.ndarray, skipped: Mapping[int, str] | None = None) -> None:
        """Write the next rows.

        `embeddings` holds the rows that were computed; `skipped` maps offsets within this block
        (of len(embeddings) + len(skipped) rows) to the reason they could not be. Skipped rows are
        dropped by `finalize`. The rows are saved when this append fills a chunk (see the module
        docstring). A refused write raises CacheWriteError and closes the file, which keeps every
        row saved before.
        """
        self._require_writer()
        skipped = dict(skipped or {})
        embeddings = np.asarray(embeddings)
        start = self._appended
        count = len(embeddings) + len(skipped)
        ds = self._rows
        if start + count > ds.shape[0]:
            raise CacheError(f"{self.path}: writing rows {start}..{start + count} past the end ({ds.shape[0]})")
        if embeddings.ndim != 2 or embeddings.shape[1] != ds.shape[1]:
            raise CacheError(f"{self.path}: rows of width {embeddings.shape[1:]} do not fit dim {ds.shape[1]}")
        if (ds.dtype == np.float16 and embeddings.dtype != np.float16 and embeddings.size
                and np.abs(embeddings).max() > _FLOAT16_MAX):  # float16 input fits by construction
            raise CacheError(f"{self.path}: feature values exceed the float16 range; store them as float32 (`dtype`)")
        block = np.zeros((count, ds.shape[1]), dtype=ds.dtype)
        keep = np.setdiff1d(np.arange(count), np.fromiter(skipped, dtype=np.int64, count=len(skipped)))
        block[keep] = embeddings
        with self._writing(rows_saved=self.rows_written):
            ds[start:start + count] = block
            if skipped:
                ids = self._file["ids"]
                offsets = sorted(skipped)
                self._append_strings("skipped/ids", [ids[start + o].decode() for o in offsets])
                self._append_strings("skipped/errors", [skipped[o] for o in offsets])
            self._appended = start + count
            chunk = ds.chunks[0]
            if (start + count) // chunk > start // chunk or start + count == ds.shape[0]:
                self._save()
        crash_point("cache.append")

    def _save(self) -> None:
        """Flush the appended rows, then advance `rows_written` in a second flush: a kill in between
        leaves the previous count (skipped entries past it are dropped when the file is reopened)."""
        if self._appended != self.rows_written:
            self._file.flush()
            crash_point("cache.save")
            self._file.attrs["rows_written"] = self._appended
            self._file.flush()

    def _drop_unsaved_skipped(self) -> None:
        """Drop skipped entries of rows past `rows_written`: a kill between the two flushes of `_save`
        keeps them, and the resumed run records those rows again."""
        if "skipped/ids" not in self._file:
            return
        row_of = {i: r for r, i in enumerate(self._read(self._file["ids"], strings=True))}
        saved = sum(row_of[i] < self.rows_written for i in self.skipped_ids)
        if saved < len(self.skipped_ids):
            with self._writing(rows_saved=self.rows_written):
                for name in ("skipped/ids", "skipped/errors"):
                    self._file[name].resize((saved,))
                self._file.flush()

    def _append_strings(self, name: str, values: list[str]) -> None:
        """Append to a growing string list of an unfinished file (variable-length: HDF5 cannot checksum
        those, so `finalize` rewrites them fixed-width and checksummed)."""
        if name not in self._file:
            self._file.create_dataset(name, shape=(0,), dtype=_STR, maxshape=(None,), chunks=(1024,))
        ds = self._file[name]
        ds.resize((ds.shape[0] + len(values),))
        ds[-len(values):] = values

    def _kept_rows(self) -> np.ndarray | None:
        """Rows that are not skipped, or None when no row is (nothing to drop)."""
        skipped = set(self.skipped_ids)
        if not skipped:
            return None
        keep = np.flatnonzero([i not in skipped for i in self._read(self._file["ids"], strings=True)])
        return None if len(keep) == self.n_rows else keep

    def finalize(self) -> None:
        """Finish the cache: drop skipped rows, mark it complete, and move it onto `target` atomically.

        Without skipped rows this file is marked complete and renamed to `target`. With them, the kept
        rows are copied in order into a fresh file (`<target>.compacting`, checksummed like the rest)
        that is renamed to `target`; this file is removed after. A kill at any step leaves `target`
        as it was or complete, never half-written, and this file as it was; finalising it again gives
        the same cache. Afterwards the cache is open for reading at `target`.
        """
        self._require_writer()
        n = self.n_rows
        if self._appended != n:
            raise CacheError(f"{self.path}: only {self._appended} of {n} rows written")
        with self._writing(rows_saved=self.rows_written):
            self._save()
        source, target = self.path, self.target
        keep = self._kept_rows()
        try:
            if keep is None:
                with self._writing(rows_saved=n):
                    self._file.attrs["complete"] = True
                    self._file.flush()
                refused = self._close_file()
                if refused:
                    raise CacheWriteError(f"{source}: cannot write ({_reason(refused)}): all {n} rows are saved in "
                                          f"it; {_remedy(refused, source.parent)}")
                _fsync(source)
                crash_point("cache.replace")
                os.replace(source, target)
            else:
                compacted = _compacting_path(target)
                self._compact_into(compacted, keep)
                self._close_file()
                crash_point("cache.replace")
                os.replace(compacted, target)
            _fsync_dir(target.parent)
        except OSError as e:  # the rename itself (e.g. the folder turned read-only)
            self._close_file()
            raise CacheWriteError(f"cannot move the finished cache onto {target} ({_reason(e)}); its rows are kept "
                                  f"in {source}; {_remedy(e, target.parent)}") from None
        crash_point("cache.cleanup")
        with contextlib.suppress(OSError):  # leftovers: `extract --resume` removes the rows file next time
            if source != target:
                source.unlink(missing_ok=True)
            _compacting_path(target).unlink(missing_ok=True)  # of an attempt killed while compacting
        self._open(target, "r")

    def _compact_into(self, dest: Path, keep: np.ndarray) -> None:
        """Write the `keep` rows, in order, as a complete cache at `dest` (this file is only read).
        A leftover `dest` from a killed attempt is replaced."""
        attrs = dict(self._file.attrs)
        attrs.update(rows_written=len(keep), complete=False)
        try:
            guard, f = _open_guarded(dest, "w")
        except OSError as e:
            raise _cannot_write_in(dest.parent, e) from None
        try:
            _write_layout(f, self.metadata().take(keep), self.dim, str(self.dtype), attrs)
            f.flush()
            crash_point("cache.compact")
            rows_out = f["embeddings"]
            for start in range(0, len(keep), self.block_rows):
                rows = keep[start:start + self.block_rows]
                rows_out[start:start + len(rows)] = self.embeddings(rows)
                f.flush()
                crash_point("cache.compact")
            _write_strings(f, "skipped/ids", self.skipped_ids)
            _write_strings(f, "skipped/errors", self.skipped_errors)
            f.attrs["complete"] = True
        finally:
            refused = _close_guarded(guard, f)
        if refused:
            dest.unlink(missing_ok=True)
            raise CacheWriteError(f"{dest}: cannot write ({_reason(refused)}) while dropping skipped rows; all "
                                  f"{self.n_rows} extracted rows are kept in {self.path}; "
                                  f"{_remedy(refused, dest.parent)}")
        _fsync(dest)

    def _point_at(self, shards: Sequence["EmbeddingCache"], base: Path) -> None:
        """Replace /embeddings by a virtual dataset over the shards' rows (paths relative to `base`).
        Virtual datasets cannot carry checksums; reads through it verify the shards' own."""
        layout = h5py.VirtualLayout(shape=(self.n_rows, self.dim), dtype=self.dtype)
        start = 0
        for shard in shards:
            source = os.path.relpath(shard.path.resolve(), base.resolve())
            layout[start:start + shard.n_rows] = h5py.VirtualSource(source, "embeddings",
                                                                    shape=(shard.n_rows, shard.dim))
            start += shard.n_rows
        del self._rows, self._file["embeddings"]
        self._rows = self._file.create_virtual_dataset("embeddings", layout)

    # ------------------------------------------------------------------ attributes
    def _json_attr(self, name: str):
        value = self._file.attrs.get(name)
        return None if value is None else json.loads(_text(value))

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
        """Rows written so far; a file without the (optional) attribute counts as all or nothing."""
        value = self._file.attrs.get("rows_written")
        return int(value) if value is not None else (self.n_rows if self.complete else 0)

    @property
    def complete(self) -> bool:
        return bool(self._file.attrs["complete"])

    @property
    def recipe(self):
        """The recipe as stored: any JSON value (our own extraction writes an object, see `Recipe`)."""
        return self._json_attr("recipe")

    @property
    def fingerprint(self) -> str:
        return _text(self._file.attrs["recipe_fingerprint"])

    @property
    def dataset(self) -> dict:
        return self._json_attr("dataset")

    @property
    def shard(self) -> dict | None:
        return self._json_attr("shard")

    @property
    def versions(self) -> dict:
        return self._json_attr("versions")

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

    def _read(self, ds: h5py.Dataset, selection=(), strings: bool = False) -> np.ndarray:
        """`ds[selection]` (as str when `strings`), with an unreadable chunk (corrupted bytes fail their
        checksum) as a CacheError."""
        try:
            return (ds.asstr() if strings else ds)[selection]
        except OSError as e:
            raise CacheError(f"{self.path}: cannot read {ds.name} ({e}); `embedcache info --check {self.path}` names "
                             "the damaged rows") from None

    def metadata(self) -> Metadata:
        """ids, labels, splits and groups of every row (read once, then kept)."""
        if self._metadata is None:
            f = self._file
            label_names = f["label"].attrs.get("names")
            self._metadata = Metadata(
                ids=np.asarray(self._read(f["ids"], strings=True), dtype=object),
                label=self._read(f["label"]),
                split=self._read(f["split"]),
                split_names=tuple(_text(s) for s in f["split"].attrs["names"]),
                groups={k: self._read(ds) for k, ds in f["groups"].items()},
                group_names={k: tuple(_text(s) for s in ds.attrs["names"]) for k, ds in f["groups"].items()},
                label_names=None if label_names is None else tuple(_text(s) for s in label_names),
            )
        return self._metadata

    def embeddings(self, rows: np.ndarray | slice | None = None, dtype: np.dtype | str | None = None) -> np.ndarray:
        """Embedding rows as numpy: all (None), a slice, or any integer index array (any order)."""
        ds = self._file["embeddings"]
        if rows is None or isinstance(rows, slice):
            out = self._read(ds, rows if rows is not None else ())
        else:
            rows = np.asarray(rows, dtype=np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= len(ds)):
                raise CacheError(f"{self.path}: row index out of range 0..{len(ds) - 1}")
            out = np.empty((len(rows), ds.shape[1]), dtype=ds.dtype)
            for positions, block in self._blocks_of(rows):
                out[positions] = block
        return out if dtype is None else out.astype(dtype, copy=False)

    def _blocks_of(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """For rows in any order: (positions in `rows`, their embeddings), one contiguous read per block;
        where such a range holds an unreadable chunk, one read per chunk that holds a wanted row."""
        ds = self._file["embeddings"]
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]

        def runs(positions: np.ndarray, step: int) -> Iterator[tuple[np.ndarray, int, int]]:
            """Positions (into sorted_rows) grouped by `step`-row stretch, with each group's row range."""
            for part in np.split(positions, np.flatnonzero(np.diff(sorted_rows[positions] // step)) + 1):
                if len(part):
                    yield part, int(sorted_rows[part[0]]), int(sorted_rows[part[-1]]) + 1

        unreadable = []
        for part, lo, hi in runs(np.arange(len(rows)), self.block_rows):
            try:
                block = ds[lo:hi]
            except OSError:
                unreadable.append(part)
                continue
            yield order[part], block[sorted_rows[part] - lo]
        if unreadable:
            for part, lo, hi in runs(np.concatenate(unreadable), ds.chunks[0] if ds.chunks else 1):
                yield order[part], self._read(ds, slice(lo, hi))[sorted_rows[part] - lo]

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
                yield np.arange(start, stop), self._read(ds, slice(start, stop))
            return
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        for start in range(0, len(rows), chunk_rows):
            part = rows[start:start + chunk_rows]
            lo, hi = int(part[0]), int(part[-1]) + 1
            block = None
            if 2 * len(part) >= hi - lo:  # most rows of their range (a pool): one contiguous read
                try:
                    block = self.embeddings(slice(lo, hi))
                except CacheError:  # a damaged chunk: read around it, row by row as `embeddings` does
                    pass
            if block is None:
                yield part, self.embeddings(part)
            else:
                yield part, block if len(part) == hi - lo else block[part - lo]

    # ------------------------------------------------------------------ checks and summary
    def _datasets(self) -> dict[str, h5py.Dataset]:
        """Every dataset in the file, by path."""
        found = {}

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                found[name] = obj

        self._file.visititems(visit)
        return found

    def _virtual_sources(self) -> list[tuple[Path, str, int]]:
        """(file, dataset, first row) of each part of a virtual /embeddings, files resolved beside this one."""
        ds = self._file["embeddings"]
        if not ds.is_virtual:
            return []
        return [(self.path.parent / source.file_name, source.dset_name, source.vspace.get_select_bounds()[0][0])
                for source in ds.virtual_sources()]

    def unchecksummed(self) -> list[str]:
        """Datasets whose bytes carry no checksum, so corrupted bytes in them cannot be detected: every
        dataset of a cache written before embedcache stored checksums (or by a tool that stores none),
        the variable-length skipped lists of an unfinished file, and a virtual /embeddings whose shard
        files lack them."""
        missing = []
        for name, ds in self._datasets().items():
            if ds.is_virtual:
                for file, dset, _ in self._virtual_sources():
                    try:
                        with h5py.File(file, "r") as source:
                            checked = source[dset].fletcher32
                    except (OSError, KeyError):
                        checked = False
                    if not checked:
                        missing.append(f"/{name} (virtual, in {file.name})")
            elif not ds.fletcher32:
                missing.append(f"/{name}")
        return missing

    def _read_all(self, name: str, ds: h5py.Dataset) -> tuple[list[str], np.ndarray]:
        """Read all of one dataset. Returns its unreadable row ranges and, for /embeddings, the rows
        holding NaN or inf. A virtual dataset is read in its source files, so a damaged chunk is named
        by rows of this cache and by file."""
        if not ds.is_virtual:
            return _scan(ds, f"/{name}", 0, name == "embeddings")
        bad, nonfinite = [], []
        for file, dset, first in self._virtual_sources():
            with h5py.File(file, "r") as source:
                part_bad, part_rows = _scan(source[dset], f"/{name}", first, True, f" (in {file.name})")
            bad += part_bad
            nonfinite.append(part_rows)
        return bad, np.concatenate(nonfinite) if nonfinite else np.zeros(0, dtype=np.int64)

    def validate(self, scan_values: bool = True) -> None:
        """Raise CacheError listing every problem found.

        Checks the embedding dtype, ids (unique, non-empty), codes against their names, the recipe
        fingerprint and completeness (the schema's required parts were checked on opening), and, with
        `scan_values`, reads every byte of every dataset: a chunk whose checksum does not match is named
        by dataset and rows, and embedding rows with NaN or inf are named by id. Datasets without
        checksums (`unchecksummed`) are read too, but corrupted bytes in them go unnoticed.
        """
        problems: list[str] = []
        if str(self.dtype) not in EMBEDDING_DTYPES:
            problems.append(f"/embeddings dtype {self.dtype} is not one of {EMBEDDING_DTYPES}")
        corrupted, nonfinite = [], np.zeros(0, dtype=np.int64)
        if scan_values:
            for name, ds in self._datasets().items():
                bad, rows = self._read_all(name, ds)
                corrupted += bad
                if name == "embeddings":
                    nonfinite = rows
        problems += corrupted
        if not any(c.startswith(("/ids", "/label", "/split", "/groups")) for c in corrupted):
            try:
                self.metadata().validate(str(self.path))
            except DatasetError as e:
                problems.append(str(e).removeprefix(f"{self.path}: "))
            if len(nonfinite):
                ids = self.metadata().ids[nonfinite[:5]].tolist()
                problems.append(f"{len(nonfinite)} row(s) with NaN/inf values, e.g. ids {ids}")
        if recipe_fingerprint(self.recipe) != self.fingerprint:
            problems.append("recipe_fingerprint does not match the stored recipe")
        if not self.complete:
            problems.append(f"not complete ({self.rows_written}/{self.n_rows} rows written)")
        if corrupted:
            problems.append("restore the file from a copy or extract it again")
        if problems:
            raise CacheError(f"{self.path}: " + "; ".join(problems))

    def check_recipe(self, recipe) -> None:
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
            (names[c] if names is not None and 0 <= c < len(names) else str(c)): int(n)
            for c, n in zip(labels.tolist(), counts)
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
            "datasets": len(self._datasets()),
            "unchecksummed": self.unchecksummed(),
        }
        if self.shard is not None:
            summary["shard"] = self.shard
        if self.skipped_ids:
            summary["skipped"] = [{"id": i, "error": e} for i, e in zip(self.skipped_ids, self.skipped_errors)]
        return summary

    # ------------------------------------------------------------------ lifetime
    def _close_file(self) -> OSError | None:
        """Close the file; for a writer, returns the OS error of a write that was refused (and dropped)."""
        if self._guard is not None:
            guard, self._guard = self._guard, None
            return _close_guarded(guard, self._file)
        if self._file.id.valid:
            self._file.close()
        return None

    def close(self) -> None:
        """Close the file. A writer first saves every appended row (finish it with `finalize`)."""
        try:
            if self._guard is not None and self._file.id.valid:
                with self._writing(rows_saved=self.rows_written):
                    self._save()
        finally:
            self._close_file()

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.close()
        except CacheWriteError:
            if exc_type is None:  # else the error already on its way matters more; saved rows stay saved
                raise

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{self.rows_written}/{self.n_rows} rows"
        return f"EmbeddingCache({str(self.path)!r}, {self.n_rows}x{self.dim} {self.dtype}, {state})"


def merge_shards(paths: Sequence[str | Path], out: str | Path, *, virtual: bool = False,
                 overwrite: bool = False) -> Path:
    """Join the complete shards of one extraction into one cache, in row order.

    The shards must share recipe fingerprint and dataset manifest, and their slices must tile the
    dataset exactly. The merged file is written beside `out` and moved onto it when complete (see
    `EmbeddingCache.create`), with checksums. `virtual` writes an HDF5 virtual dataset that points
    at the shard files (by paths relative to `out`; keep them together) instead of copying the
    embeddings; virtual datasets carry no checksums of their own, reads through it verify the shards'.
    """
    out = Path(out)
    if not paths:
        raise CacheError("no shard files given")
    if out.exists() and not overwrite:
        raise CacheError(f"{out} already exists; pass `overwrite` to replace it")
    inputs = {Path(p).resolve() for p in paths}
    if out.resolve() in inputs or partial_path(out).resolve() in inputs:
        raise ConfigError(f"{out} is one of the shards; choose another file", param="out")
    shards = [EmbeddingCache(p) for p in paths]
    try:
        first = shards[0]
        for shard in shards:
            shard.require_complete()
            if not (isinstance(shard.shard, dict) and {"index", "count"} <= shard.shard.keys()):
                raise CacheError(f"{shard.path} is not a shard (extracted without `shard`)")
            if shard.fingerprint != first.fingerprint:
                raise CacheError(f"{shard.path} has recipe {shard.fingerprint[:12]}, {first.path} has "
                                 f"{first.fingerprint[:12]}: "
                                 + "; ".join(recipe_difference(first.recipe, shard.recipe)))
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
        skipped = [(i, e) for c in shards for i, e in zip(c.skipped_ids, c.skipped_errors)]
        with EmbeddingCache.create(out, merged, dim=first.dim, dtype=str(first.dtype), recipe=first.recipe,
                                   dataset=first.dataset, overwrite=overwrite) as target:
            if virtual:
                with target._writing(rows_saved=0):
                    target._point_at(shards, out.parent)
            else:
                for shard in shards:
                    for _, block in shard.iter_chunks():
                        target.append(block)
            if skipped:
                with target._writing(rows_saved=target.rows_written):
                    _write_strings(target._file, "skipped/ids", [i for i, _ in skipped])
                    _write_strings(target._file, "skipped/errors", [e for _, e in skipped])
            target._appended = target.n_rows  # a virtual dataset's rows are in the shards already
            target.finalize()
    finally:
        for shard in shards:
            shard.close()
    return out
