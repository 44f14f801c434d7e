"""Import of existing vectors: an embeddings file plus a metadata table → a schema-v1 cache.

Many users already have embeddings (CLIP via open_clip, an embeddings API, their own model). This
module writes them into an `EmbeddingCache` with the same strictness as the dataset adapters:

* vectors: `.npy`, `.npz` (one named array) or `.parquet` (a list, fixed-size-list or fixed-shape-tensor
  column), 2-D, floating point, every value finite. They are read in blocks, never whole: `.npy` and
  `.npz` members by plain reads from the file (or zip member) after their header, Parquet page by page
  through `ParquetFile.iter_batches`. A compressed `.npz` member streams too, decompressed as it is read.
* metadata: a CSV or Parquet table with an id column, a label column (class indices or names, parsed by
  `metadata.parse_labels`), an optional split column (validated by `metadata.parse_splits`) and any
  group columns. Ids are unique and non-empty; they align with the vectors by an id column in the
  embeddings file when it has one, else by row order (then the row counts must agree).

Everything is checked in a first pass (which also computes the sha256 of the vectors' content) before
the cache is created; a second pass writes the rows. The recipe's fingerprint covers that content hash
and the dtypes, not the file's name or format, so the same vectors imported twice, or once from .npy
and once from Parquet, compare equal, and different vectors never do.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import functools
import os
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from embedcache.cache import EMBEDDING_DTYPES, EmbeddingCache
from embedcache.datasets.base import csv_columns, csv_rows, require_all_cells
from embedcache.errors import CacheError, ConfigError, DatasetError
from embedcache.metadata import (Locate, Metadata, group_values, parse_ids, parse_labels, parse_splits,
                                 require_label_column)
from embedcache.recipe import vectors_digest

#: Bytes of vectors read per block (the import's working memory is a few of these).
BLOCK_BYTES = 16 << 20
#: Most distinct values a group (or label names) may have: a cache keeps them in an HDF5 attribute (64 KiB).
MAX_NAMES = 4000
FORMATS = {".npy": "npy", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet"}
METADATA_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: progress(phase, done, total): phase "check" (first pass) or "write" (second), rows done so far.
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class ImportOptions:
    """How to read the two files. Only `dtype` changes the numbers stored (it is in the recipe)."""

    model: str  # what made the vectors, e.g. "open_clip ViT-B-32 laion2b_s34b_b79k": the cache's label
    vectors: str | None = None  # .npz array / Parquet column holding the vectors (default: the only candidate)
    ids: str | None = None  # .npz array / Parquet column holding ids (default: one named like id_column, if any)
    id_column: str = "id"
    label_column: str = "label"
    split_column: str = "split"
    groups: Sequence[str] | None = None  # group columns (default: every scalar column but id, label and split)
    unlabelled: bool = False  # no label column: every label unknown (-1)
    splits: Sequence[str] | None = None  # allowed split names (default: train, val, test, id_val, id_test)
    dtype: str | None = None  # storage dtype; default: the source's (float64 is stored as float32)
    overwrite: bool = False
    block_bytes: int = BLOCK_BYTES


@dataclasses.dataclass
class ImportResult:
    path: Path
    rows: int
    dim: int
    dtype: str  # as stored
    source_dtype: str
    content_sha256: str
    fingerprint: str  # the cache's recipe fingerprint
    aligned_by: str  # "ids" (an id column in the embeddings file) or "order"
    seconds: float


class _BadRows(Exception):
    """Raised by a reader for rows it cannot turn into vectors; the importer names their ids."""

    def __init__(self, rows: np.ndarray, problem: str):
        super().__init__(problem)
        self.rows, self.problem = rows, problem


# ---------------------------------------------------------------------------------------------- vector files

def _check_array(shape: tuple, dtype: np.dtype, where: str) -> None:
    """A 2-D, non-empty array of float16/32/64, or an error saying what it is instead."""
    if dtype.hasobject or dtype.fields is not None or dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        kind = "Python objects" if dtype.hasobject else f"{dtype} values"
        raise DatasetError(f"{where} holds {kind}; embeddings must be floating point (float16, float32 or "
                           "float64); convert them first (quantised vectors: dequantise them)")
    if len(shape) != 2:
        raise DatasetError(f"{where} has shape {tuple(shape)}: embeddings must be a 2-D array [rows, dim], one vector "
                           "per row")
    if 0 in shape:
        raise DatasetError(f"{where} has shape {tuple(shape)}: no vectors to import")


def _native(block: np.ndarray) -> np.ndarray:
    return block if block.dtype.isnative else block.astype(block.dtype.newbyteorder("="))


class VectorFile(abc.ABC):
    """An embeddings file read a block of rows at a time. Subclasses set rows, dim, dtype and `key` (the
    array or column read) in __init__, after checking everything a header can tell."""

    format: str
    path: Path
    rows: int
    dim: int
    dtype: np.dtype  # as stored in the file, native byte order
    key: str | None = None
    id_key: str | None = None  # where the file's ids are, if it has them

    @abc.abstractmethod
    def blocks(self, block_rows: int) -> Iterator[np.ndarray]:
        """Consecutive [n, dim] blocks of at most `block_rows` rows, C-contiguous, native byte order."""

    def ids(self) -> list[object] | None:
        """The ids the file carries, in row order, or None."""
        return None

    @property
    def name(self) -> str:
        return f"{self.path.name}[{self.key}]" if self.key else self.path.name

    def describe(self) -> dict:
        return {"file": str(self.path.resolve()), "format": self.format, "vectors": self.key, "ids": self.id_key,
                "shape": [self.rows, self.dim], "dtype": str(self.dtype)}


def _read_npy_header(f, where: str) -> tuple[tuple, bool, np.dtype]:
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(f)
        if version == (1, 0):
            return npy.read_array_header_1_0(f)
        if version == (2, 0):
            return npy.read_array_header_2_0(f)
        raise ValueError(f"format version {version} is not read here")
    except ValueError as e:
        raise DatasetError(f"{where}: not a readable .npy array ({e})") from None


def _stream(f, rows: int, dim: int, dtype: np.dtype, block_rows: int, where: str) -> Iterator[np.ndarray]:
    """Rows of a C-order array from a binary file positioned at its data, `block_rows` at a time."""
    for start in range(0, rows, block_rows):
        block = np.empty((min(block_rows, rows - start), dim), dtype=dtype)
        view, filled = memoryview(block).cast("B"), 0
        while filled < len(view):
            got = f.readinto(view[filled:])
            if not got:
                raise DatasetError(f"{where}: the file ends at row {start + filled // (dim * dtype.itemsize)} of "
                                   f"{rows} (truncated?)")
            filled += got
        yield _native(block)


class NpyFile(VectorFile):
    """A .npy file: C-order arrays are read block by block after the header; a Fortran-order one (columns
    first on disk) through `np.load(mmap_mode="r")`, a block of rows at a time."""

    format = "npy"

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            shape, self.fortran, dtype = _read_npy_header(f, str(path))
            self.offset = f.tell()
        _check_array(shape, dtype, str(path))
        self.rows, self.dim = shape
        self.file_dtype, self.dtype = dtype, dtype.newbyteorder("=")
        expected = self.offset + self.rows * self.dim * dtype.itemsize
        if os.path.getsize(path) < expected:
            raise DatasetError(f"{path}: {os.path.getsize(path)} bytes, but its header promises {shape} {dtype} "
                               f"({expected} bytes): the file is truncated")

    def blocks(self, block_rows: int) -> Iterator[np.ndarray]:
        if self.fortran:
            array = np.load(self.path, mmap_mode="r")
            for start in range(0, self.rows, block_rows):
                yield _native(np.ascontiguousarray(array[start:start + block_rows]))
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            yield from _stream(f, self.rows, self.dim, self.file_dtype, block_rows, str(self.path))


class NpzFile(VectorFile):
    """A .npz archive: the vectors are one member, streamed from the zip (stored members are plain reads,
    compressed ones are decompressed as they are read); the ids may be another member."""

    format = "npz"

    def __init__(self, path: Path, vectors: str | None, ids: str | None, id_column: str):
        self.path = path
        try:
            with zipfile.ZipFile(path) as archive:
                infos = {i.filename[:-4]: i for i in archive.infolist() if i.filename.endswith(".npy")}
        except (OSError, zipfile.BadZipFile) as e:
            raise DatasetError(f"{path}: not a readable .npz archive ({e})") from None
        if ids is not None and ids not in infos:
            raise ConfigError(f"{ids}: {path} has no array {ids!r}; it holds {sorted(infos)}", param="ids")
        self.id_key = ids if ids is not None else (id_column if id_column in infos else None)
        candidates = [name for name in infos if name != self.id_key]
        if vectors is None:
            if len(candidates) != 1:
                raise ConfigError(f"{path} holds the arrays {sorted(infos)}; name the one with the vectors with "
                                  "`vectors`")
            vectors = candidates[0]
        elif vectors not in infos:
            raise ConfigError(f"{vectors}: {path} has no array {vectors!r}; it holds {sorted(infos)}", param="vectors")
        self.key, self.info = vectors, infos[vectors]
        self.compressed = self.info.compress_type != zipfile.ZIP_STORED
        with zipfile.ZipFile(path) as archive, archive.open(self.info) as f:
            shape, fortran, dtype = _read_npy_header(f, self.name)
            self.offset = f.tell()
        _check_array(shape, dtype, f"{path} array {vectors!r}")
        if fortran:
            raise DatasetError(f"{path} array {vectors!r} is stored in Fortran (column-major) order, which cannot be "
                               "read a row at a time; save it in C order (np.savez(..., x=np.ascontiguousarray(x))) "
                               "or as a .npy file")
        self.rows, self.dim = shape
        self.file_dtype, self.dtype = dtype, dtype.newbyteorder("=")
        if self.info.file_size < self.offset + self.rows * self.dim * dtype.itemsize:
            raise DatasetError(f"{path} array {vectors!r}: the member is shorter than its header promises "
                               f"({shape} {dtype}): the archive is truncated")

    def blocks(self, block_rows: int) -> Iterator[np.ndarray]:
        with zipfile.ZipFile(self.path) as archive, archive.open(self.info) as f:
            _read_npy_header(f, self.name)
            yield from _stream(f, self.rows, self.dim, self.file_dtype, block_rows, self.name)

    def ids(self) -> list[object] | None:
        if self.id_key is None:
            return None
        from numpy.lib import format as npy

        with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.id_key}.npy") as f:
            try:
                values = npy.read_array(f, allow_pickle=False)
            except ValueError as e:
                raise DatasetError(f"{self.path} array {self.id_key!r} (the ids): {e}; save the ids as strings, "
                                   "e.g. np.array(ids, dtype=str)") from None
        if values.ndim != 1 or values.dtype.kind not in "USiu":
            raise DatasetError(f"{self.path} array {self.id_key!r} (the ids) has shape {values.shape} and dtype "
                               f"{values.dtype}; ids must be a 1-D array of strings or integers")
        return values.tolist()

    def describe(self) -> dict:
        return {**super().describe(), "compressed": self.compressed}


def _is_list(data_type) -> bool:
    import pyarrow as pa

    return pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type)


class ParquetVectors(VectorFile):
    """A Parquet file whose vectors are a list, large_list, fixed_size_list or fixed-shape-tensor column, read
    page by page (`pre_buffer=False`, so memory does not grow with the row group size)."""

    format = "parquet"

    def __init__(self, path: Path, vectors: str | None, ids: str | None, id_column: str):
        import pyarrow as pa

        self.path = path
        self.file = _parquet_file(path)
        schema = self.file.schema_arrow
        names = schema.names
        if ids is not None and ids not in names:
            raise ConfigError(f"{ids}: {path} has no column {ids!r}; it has {names}", param="ids")
        self.id_key = ids if ids is not None else (id_column if id_column in names else None)
        if vectors is None:
            candidates = [f.name for f in schema if _is_list(_storage(f.type))]
            if len(candidates) != 1:
                found = f"the list columns {candidates}" if candidates else f"no list column among {names}"
                raise ConfigError(f"{path} has {found}; name the column with the vectors with `vectors`")
            vectors = candidates[0]
        elif vectors not in names:
            raise ConfigError(f"{vectors}: {path} has no column {vectors!r}; it has {names}", param="vectors")
        self.key = vectors
        where = f"{path} column {vectors!r}"
        column_type = schema.field(vectors).type
        if isinstance(column_type, pa.FixedShapeTensorType) and len(column_type.shape) != 1:
            raise DatasetError(f"{where} holds tensors of shape {column_type.shape}: embeddings must be one vector "
                               "per row")
        storage = _storage(column_type)
        if not _is_list(storage):
            raise DatasetError(f"{where} has type {column_type}: the vectors must be a list, fixed_size_list or "
                               "fixed-shape tensor column, one vector per row")
        value_type = storage.value_type
        if _is_list(value_type):
            raise DatasetError(f"{where} has type {column_type} (lists of lists): embeddings must be a 2-D array "
                               "[rows, dim], one flat vector per row")
        if not pa.types.is_floating(value_type):
            raise DatasetError(f"{where} holds {value_type} values; embeddings must be floating point (float16, "
                               "float32 or float64); convert them first (quantised vectors: dequantise them)")
        self.dtype = np.dtype(value_type.to_pandas_dtype())
        self.rows = self.file.metadata.num_rows
        if not self.rows:
            raise DatasetError(f"{where}: no rows to import")
        if pa.types.is_fixed_size_list(storage):
            self.dim = storage.list_size
        else:
            first = next(self.file.iter_batches(batch_size=1, columns=[vectors])).column(0)
            if first.null_count:
                raise DatasetError(f"{where}: row 0 has no vector (null)")
            self.dim = len(first[0])
        if not self.dim:
            raise DatasetError(f"{where} has shape ({self.rows}, 0): no vectors to import")

    def blocks(self, block_rows: int) -> Iterator[np.ndarray]:
        import pyarrow as pa
        import pyarrow.compute as pc

        start = 0
        # Arrow's list reader holds about five times a batch while it decodes one (some 80 MB for 16 MiB blocks)
        for batch in _parquet_file(self.path).iter_batches(batch_size=block_rows, columns=[self.key]):
            column = batch.column(0)
            if isinstance(column.type, pa.BaseExtensionType):
                column = column.storage
            n = len(column)
            if column.null_count:
                raise _BadRows(start + np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)),
                               "have no vector (null)")
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            if (lengths != self.dim).any():
                raise _BadRows(start + np.flatnonzero(lengths != self.dim),
                               f"have a vector whose length is not {self.dim} (the first row's)")
            values = column.flatten()
            if values.null_count:
                nulls = values.is_null().to_numpy(zero_copy_only=False).reshape(n, self.dim).any(axis=1)
                raise _BadRows(start + np.flatnonzero(nulls), "hold missing (null) values")
            yield _native(np.ascontiguousarray(values.to_numpy(zero_copy_only=False).reshape(n, self.dim)))
            start += n

    def ids(self) -> list[object] | None:
        if self.id_key is None:
            return None
        return self.file.read(columns=[self.id_key]).column(0).to_pylist()


def _storage(data_type):
    import pyarrow as pa

    return data_type.storage_type if isinstance(data_type, pa.BaseExtensionType) else data_type


def _parquet_file(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path}: not a readable Parquet file ({e})") from None


def _file_kind(path: Path, formats: dict[str, str], expected: str) -> str:
    """The format `formats` gives the file's suffix; an error naming the file when it has none or is missing."""
    kind = formats.get(path.suffix.lower())
    if kind is None:
        raise DatasetError(f"{path}: {expected}")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    return kind


def open_vectors(path: str | Path, vectors: str | None = None, ids: str | None = None,
                 id_column: str = "id") -> VectorFile:
    """The embeddings file at `path`, its header (shape, dtype, where the vectors and ids are) checked."""
    path = Path(path)
    kind = _file_kind(path, FORMATS, "embeddings must be a .npy, .npz or .parquet file")
    if kind == "npy":
        for name, value in (("vectors", vectors), ("ids", ids)):
            if value is not None:
                raise ConfigError(f"names an array or column, but {path} is a single .npy array", param=name)
        return NpyFile(path)
    if kind == "npz":
        return NpzFile(path, vectors, ids, id_column)
    return ParquetVectors(path, vectors, ids, id_column)


# ---------------------------------------------------------------------------------------------- metadata table

@dataclasses.dataclass
class MetadataTable:
    """The metadata as read, in the table's order, and where each row is (for messages)."""

    metadata: Metadata
    locate: Locate


def read_metadata_table(path: str | Path, options: ImportOptions) -> MetadataTable:
    """A CSV or Parquet table → Metadata, parsed by the same strict rules as the manifest adapter."""
    path = Path(path)
    kind = _file_kind(path, METADATA_FORMATS, "the metadata must be a .csv or .parquet file")
    if kind == "csv":
        columns = csv_columns(path)
        nested: list[str] = []
    else:
        table_file = _parquet_file(path)
        columns = table_file.schema_arrow.names
        nested = [f.name for f in table_file.schema_arrow if f.type.num_fields]  # lists, structs: never groups
    o = options
    if o.id_column not in columns:
        raise DatasetError(f"{path}: no id column {o.id_column!r} (found {columns}); name it with `id_column`")
    require_label_column(o.label_column in columns, o.unlabelled, str(path), o.label_column, "`unlabelled`")
    reserved = {o.id_column, o.label_column, o.split_column}
    if o.groups is None:
        groups = [c for c in columns if c not in reserved and c not in nested]
    else:
        groups = list(o.groups)
        unknown = [g for g in groups if g not in columns or g in reserved or g in nested]
        if unknown:
            raise ConfigError(f"{unknown[0]}: not a group column of {path} (its columns: {columns}; the id, label and "
                              "split columns and list columns cannot be groups)", param="groups")
    wanted = [c for c in (o.id_column, o.label_column, o.split_column, *groups) if c in columns]
    if kind == "csv":
        values = _read_csv(path, columns, wanted)
        lines = functools.cache(lambda: _csv_lines(path))

        def where(i: int) -> str:
            return f"{path}, line {lines()[i]}"
    else:
        table = table_file.read(columns=wanted)
        values = {c: table.column(c).to_pylist() for c in wanted}
        del table

        def where(i: int) -> str:
            return f"{path}, row {i}"
    ids = parse_ids(values[o.id_column], where, o.id_column)

    def locate(i: int) -> str:
        return f"{where(i)} ({o.id_column} {ids[i]!r})"

    n = len(ids)
    if not n:
        raise DatasetError(f"{path}: no rows")
    labels, label_names = (parse_labels(values[o.label_column], locate, o.label_column)
                           if o.label_column in values else (np.full(n, -1), None))
    splits = parse_splits(values.get(o.split_column, [None] * n), locate, o.splits, "`splits` NAME,NAME,...",
                          o.split_column)
    group_columns = {g: group_values(values[g]) for g in groups}
    for name, names in [(o.label_column, label_names or ())] + [(g, set(v)) for g, v in group_columns.items()]:
        if len(names) > MAX_NAMES:
            raise DatasetError(f"{path}: column {name!r} has {len(names)} distinct values; a cache keeps at most "
                               f"{MAX_NAMES} names per label or group column" +
                               ("" if name == o.label_column else ": choose the group columns with `groups`"))
    metadata = Metadata.from_values(ids, labels, splits, groups=group_columns, label_names=label_names)
    return MetadataTable(metadata, locate)


def _read_csv(path: Path, columns: list[str], wanted: list[str]) -> dict[str, list[str]]:
    """The `wanted` columns of a CSV file as lists of strings (empty cells as ""), read by pyarrow's CSV reader
    (several times faster than the csv module on a million rows); a row of the wrong width is named by line."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    try:
        table = pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                                convert_options=pa_csv.ConvertOptions(
                                    column_types={c: pa.string() for c in columns}, include_columns=wanted,
                                    strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (OSError, pa.ArrowException) as e:
        for line, row in csv_rows(path, []):  # find the culprit's line with the csv module
            require_all_cells(row, f"{path}, line {line}", len(columns))
        raise DatasetError(f"{path}: cannot read CSV ({e})") from None
    return {c: table.column(c).to_pylist() for c in wanted}


def _csv_lines(path: Path) -> list[int]:
    """The line each data row of a CSV file starts on (rows may span lines), read only to word an error."""
    return [line for line, _ in csv_rows(path, [])]


# ---------------------------------------------------------------------------------------------- the import

def _align(vectors: VectorFile, table: MetadataTable, metadata_path: Path) -> tuple[Metadata, str]:
    """The metadata in the vectors' row order: by the file's ids when it has them, else row for row."""
    meta = table.metadata
    file_ids = vectors.ids()
    if file_ids is None:
        if vectors.rows != len(meta):
            raise DatasetError(f"{vectors.name} holds {vectors.rows} vectors but {metadata_path} has {len(meta)} rows; "
                               "without an id column in the embeddings file (`ids`) they are matched row for row, "
                               "so the counts must agree")
        return meta, "order"
    if len(file_ids) != vectors.rows:
        raise DatasetError(f"{vectors.name}: {len(file_ids)} ids for {vectors.rows} vectors")
    ids = parse_ids(file_ids, lambda i: f"{vectors.path} {vectors.id_key!r}, row {i}", vectors.id_key or "id")
    row_of = {example_id: i for i, example_id in enumerate(meta.ids)}
    order = np.fromiter((row_of.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
    unmatched = [ids[j] for j in np.flatnonzero(order < 0)[:5]]
    if unmatched:
        raise DatasetError(f"{vectors.name}: {int((order < 0).sum())} id(s) with no row in {metadata_path}, e.g. "
                           f"{unmatched}")
    if len(ids) != len(meta):
        present = np.zeros(len(meta), dtype=bool)
        present[order] = True
        missing = np.flatnonzero(~present)
        raise DatasetError(f"{table.locate(int(missing[0]))}: no vector with this id in {vectors.name} "
                           f"({len(missing)} metadata row(s) have none, e.g. ids {meta.ids[missing[:5]].tolist()})")
    return meta.take(order), "ids"


_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


class _Magnitudes:
    """Rows whose largest |value| reaches a bound, found on the floats' bit patterns with the sign bit cleared
    (ordered like the magnitudes, inf and NaN above every finite value): for float16 several times faster than
    np.abs or np.isfinite. A block is scanned once as a whole; rows are looked at only when it fails."""

    def __init__(self, dtype: np.dtype, block_rows: int, dim: int):
        self.unsigned = _BITS[dtype.itemsize]
        self.sign_off = self.unsigned(np.iinfo(self.unsigned).max >> 1)
        self.scratch = np.empty((block_rows, dim), dtype=self.unsigned)

    def rows_at_least(self, block: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
        """(largest magnitude bits, offset in the block) of the rows whose largest magnitude bits are >= bound."""
        bits = self.scratch[:len(block)]
        np.bitwise_and(block.view(self.unsigned), self.sign_off, out=bits)
        if bits.max() < bound:
            return np.empty(0, dtype=bits.dtype), np.empty(0, dtype=np.int64)
        largest = bits.max(axis=1)
        rows = np.flatnonzero(largest >= bound)
        return largest[rows], rows


def _bits(value: float, dtype: np.dtype) -> int:
    return int(np.array(value, dtype=dtype).view(_BITS[dtype.itemsize]))


@dataclasses.dataclass
class _Scan:
    content_sha256: str
    nonfinite: np.ndarray  # row indices
    out_of_range: np.ndarray  # rows beyond the storage dtype's range


def _scan(vectors: VectorFile, block_rows: int, storage: np.dtype, progress: Progress | None) -> _Scan:
    """First pass: the content hash (in a second thread, overlapping the reads and checks) and the rows whose
    values are not finite or do not fit the storage dtype."""
    digest = vectors_digest(vectors.dtype, vectors.rows, vectors.dim)
    infinity = _bits(np.inf, vectors.dtype)
    # rows at or above `bound` are non-finite or (when stored narrower) beyond the storage dtype's largest value
    bound = _bits(np.finfo(storage).max, vectors.dtype) + 1 if storage.itemsize < vectors.dtype.itemsize else infinity
    magnitudes = _Magnitudes(vectors.dtype, block_rows, vectors.dim)
    nonfinite, out_of_range, start = [], [], 0
    pending = None
    with concurrent.futures.ThreadPoolExecutor(1) as hasher:
        if progress:
            progress("check", 0, vectors.rows)
        for block in vectors.blocks(block_rows):
            little = block.astype(block.dtype.newbyteorder("<"), copy=False)
            if pending is not None:
                pending.result()
            pending = hasher.submit(digest.update, little)
            largest, rows = magnitudes.rows_at_least(block, bound)
            nonfinite.append(start + rows[largest >= infinity])
            out_of_range.append(start + rows[largest < infinity])
            start += len(block)
            if progress:
                progress("check", start, vectors.rows)
        if pending is not None:
            pending.result()
    return _Scan(digest.hexdigest(), np.concatenate(nonfinite), np.concatenate(out_of_range))


def _storage_dtype(requested: str | None, source: np.dtype) -> np.dtype:
    if requested is None:
        return np.dtype("float32") if source.itemsize == 8 else source
    if requested not in EMBEDDING_DTYPES:
        raise ConfigError(f"must be one of {EMBEDDING_DTYPES}, got {requested!r}", param="dtype")
    return np.dtype(requested)


def _rows_named(rows: np.ndarray, meta: Metadata) -> str:
    shown = ", ".join(repr(meta.ids[r]) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    return f"{len(rows)} row(s) (ids {shown})"


def import_embeddings(embeddings: str | Path, metadata: str | Path, out: str | Path, options: ImportOptions,
                      progress: Progress | None = None) -> ImportResult:
    """Write the vectors in `embeddings` with the `metadata` table as the cache `out` (rows in the embeddings
    file's order). Everything is validated before the cache is created; `out` is never replaced unless
    `options.overwrite`."""
    started = time.perf_counter()
    embeddings, metadata, out = Path(embeddings), Path(metadata), Path(out)
    if not options.model or not options.model.strip():
        raise ConfigError("say what made the vectors, e.g. 'open_clip ViT-B-32 laion2b_s34b_b79k'", param="model")
    if out.exists() and not options.overwrite:
        raise CacheError(f"{out} already exists; pass `overwrite` to replace it")
    for given in (embeddings, metadata):
        if out.resolve() == given.resolve():
            raise ConfigError(f"{out} is the input file {given}; write the cache somewhere else", param="out")
    if options.block_bytes < 1:
        raise ConfigError("must be positive", param="block_bytes")
    vectors = open_vectors(embeddings, options.vectors, options.ids, options.id_column)
    storage = _storage_dtype(options.dtype, vectors.dtype)
    table = read_metadata_table(metadata, options)
    meta, aligned_by = _align(vectors, table, metadata)
    block_rows = max(1, options.block_bytes // (vectors.dim * vectors.dtype.itemsize))
    before = os.stat(embeddings)
    try:
        scan = _scan(vectors, block_rows, storage, progress)
    except _BadRows as bad:
        raise DatasetError(f"{vectors.name}: {_rows_named(bad.rows, meta)} {bad.problem}") from None
    if len(scan.nonfinite):
        raise DatasetError(f"{vectors.name}: {_rows_named(scan.nonfinite, meta)} hold NaN or infinite values; fix or "
                           "drop those rows (and their metadata rows)")
    if len(scan.out_of_range):
        raise DatasetError(f"{vectors.name}: {_rows_named(scan.out_of_range, meta)} hold values beyond the {storage} "
                           f"range (±{np.finfo(storage).max:g}); store them as float32 (`dtype`)")
    recipe = {
        "spec": options.model.strip(),
        "architecture": {"import": "vectors made elsewhere"},
        "weights": {"source": "imported", "sha256": scan.content_sha256},
        "features": {"dim": vectors.dim, "source_dtype": str(vectors.dtype)},
        "preprocess": {},
        "amp": None,
        "dtype": str(storage),
    }
    source = {**vectors.describe(), "model": options.model.strip(), "content_sha256": scan.content_sha256,
              "metadata": str(metadata.resolve()), "aligned_by": aligned_by}
    dataset = {"name": "import", "root": str(embeddings.resolve()), "options": source, "modality": "embeddings",
               "rows": len(meta), "manifest_sha256": meta.fingerprint(scan.content_sha256)}
    with EmbeddingCache.create(out, meta, dim=vectors.dim, dtype=str(storage), recipe=recipe, dataset=dataset,
                               overwrite=options.overwrite) as cache:
        done = 0
        if progress:
            progress("write", 0, vectors.rows)
        for block in vectors.blocks(block_rows):
            cache.append(block.astype(storage, copy=False))
            done += len(block)
            if progress:
                progress("write", done, vectors.rows)
        after = os.stat(embeddings)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise DatasetError(f"{embeddings} changed while it was being imported; import it again")
        cache.finalize()
        fingerprint = cache.fingerprint
    return ImportResult(path=out, rows=len(meta), dim=vectors.dim, dtype=str(storage), source_dtype=str(vectors.dtype),
                        content_sha256=scan.content_sha256, fingerprint=fingerprint, aligned_by=aligned_by,
                        seconds=time.perf_counter() - started)
