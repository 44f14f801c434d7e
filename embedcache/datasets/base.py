"""The dataset adapter interface: metadata for every example, and each example's input on demand.

An adapter reads a dataset's own on-disk format and returns `Metadata` (ids, labels, splits,
groups) plus one input reference per example: an image path relative to `image_root`, or the
text itself. Adding a dataset is one file: subclass `DatasetAdapter`, implement `read`, and
register it with `@register_dataset("name")`.
"""

from __future__ import annotations

import abc
import csv
import functools
import os
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence, TypeVar

from embedcache.errors import ConfigError, DatasetError
from embedcache.metadata import Metadata
from embedcache.registry import Registry

#: File name endings read as images (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


DATASETS: Registry[type["DatasetAdapter"]] = Registry("dataset")

T = TypeVar("T")


def register_dataset(name: str):
    """Class decorator: register an adapter under `name` (also its `name` attribute)."""
    def decorator(cls: type["DatasetAdapter"]) -> type["DatasetAdapter"]:
        cls.name = name
        return DATASETS.register(name)(cls)
    return decorator


class DatasetAdapter(abc.ABC):
    """One dataset on disk. Options are keyword arguments of the subclass's __init__."""

    name: ClassVar[str] = ""
    modality: ClassVar[str]  # "image" | "text"
    #: How a user lets image paths lead outside `image_root`, for adapters that offer it (None: never allowed).
    outside_root_option: ClassVar[str | None] = None

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.exists():
            raise DatasetError(f"{self.root}: no such file or folder (the root of dataset {self.name!r})", param="root")
        #: The file listing the examples and each example's line in it, where the adapter reads one (for messages).
        self.listing: Path | None = None
        self.row_lines: list[int] = []
        self.allow_outside_root = False

    @abc.abstractmethod
    def read(self) -> tuple[Metadata, list[str]]:
        """Metadata for every example and its input: image path (relative to `image_root`) or text."""

    @functools.cached_property
    def _table(self) -> tuple[Metadata, list[str]]:
        metadata, inputs = self.read()
        if len(inputs) != len(metadata):
            raise DatasetError(f"{self.root}: {len(inputs)} inputs for {len(metadata)} examples")
        if not len(metadata):
            raise DatasetError(f"{self.root}: no examples found")
        metadata.validate(str(self.root))
        if self.modality == "image" and not self.allow_outside_root:
            self._refuse_paths_outside_root(metadata, inputs)
        return metadata, inputs

    def _refuse_paths_outside_root(self, metadata: Metadata, inputs: list[str]) -> None:
        """Image paths are relative to `image_root`: one that is absolute or climbs out with `..` is refused (read
        by mistake it would put files from anywhere on the machine into a cache). The check is on the path as
        written, so a symlink inside the root that points elsewhere (a common way to assemble a dataset) is fine."""
        root = os.path.abspath(self.image_root)
        for i, path in enumerate(inputs):
            if os.path.isabs(path) or os.path.normpath(path).split(os.sep)[0] == os.pardir:
                resolved = os.path.normpath(os.path.join(root, path))
                if os.path.commonpath([root, resolved]) == root:
                    continue
                where = (f"{self.listing}, line {self.row_lines[i]}" if self.row_lines else str(self.root))
                allow = f", or pass {self.outside_root_option} if it is meant to" if self.outside_root_option else ""
                raise DatasetError(f"{where} (id {metadata.ids[i]!r}): image path {path!r} leads outside {root}, "
                                   f"the folder image paths are relative to; move the file under it{allow}")

    @property
    def metadata(self) -> Metadata:
        return self._table[0]

    @property
    def inputs(self) -> list[str]:
        return self._table[1]

    @property
    def image_root(self) -> Path:
        """Folder that image paths are relative to."""
        return self.root if self.root.is_dir() else self.root.parent

    def input_path(self, i: int) -> Path:
        return self.image_root / self.inputs[i]

    def location(self, i: int) -> str:
        """Where example i comes from, for error messages: its image (or text) and its line in the listing."""
        where = str(self.input_path(i)) if self.modality == "image" else f"{self.root} text"
        line = f" from {self.listing} line {self.row_lines[i]}" if self.row_lines else ""
        return f"{where} (id {self.metadata.ids[i]!r}){line}"

    def load(self, i: int) -> Any:
        """The raw input of example i: an RGB PIL image or a string. Errors name the file and id."""
        if self.modality == "text":
            return self.inputs[i]
        return open_image(self.input_path(i), self.metadata.ids[i])

    def missing_files(self) -> list[int]:
        """Indices of examples whose image file does not exist (always [] for text)."""
        if self.modality != "image":
            return []
        return [i for i in range(len(self.inputs)) if not self.input_path(i).is_file()]

    def describe(self) -> dict:
        """What goes into a cache's `dataset` attribute: name, root, options, size and manifest hash."""
        return {
            "name": self.name,
            "root": str(self.root.resolve()),
            "options": self.options(),
            "modality": self.modality,
            "rows": len(self.metadata),
            "manifest_sha256": self.metadata.fingerprint(self.inputs),
        }

    def options(self) -> dict:
        """The adapter's options as given; subclasses with options override this."""
        return {}


def open_image(path: Path, example_id: str):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found (id {example_id!r})") from None
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), ValueError, ...
        raise DatasetError(f"{path}: cannot read image (id {example_id!r}): {type(e).__name__}: {e}") from None


def flag_option(value: bool | str, option: str) -> bool:
    """An adapter's yes/no option as given on the command line (-o unlabelled=true) or in Python (True)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"-o {option}={value}: expected true or false")


def csv_columns(path: Path) -> list[str]:
    """The header of a CSV file; an unreadable or empty file is an error naming it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read CSV ({e})") from None


def csv_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream a CSV file's rows as (line the row starts on, row dict); a missing column names the file.

    Unlike `read_csv` nothing is held in memory, and line numbers stay right when quoted cells span lines.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            missing = [c for c in required if c not in columns]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing}; found {columns}")
            start = reader.line_num + 1
            for row in reader:
                yield start, row
                start = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read CSV ({e})") from None


def require_all_cells(row: Mapping[str | None, object], where: str, width: int) -> None:
    """A CSV row with more or fewer cells than the header is an error (csv.DictReader would pad or drop them)."""
    if None in row or any(v is None for v in row.values()):
        cells = width + len(row.get(None) or ()) - sum(v is None for v in row.values())
        raise DatasetError(f"{where}: {cells} cells, but the header has {width} columns")


def coded(row: Mapping[str, str | None], column: str, codes: Mapping[str, T], where: str) -> T:
    """The meaning of a coded cell (e.g. split "0" → "train"); any other value is an error naming `where`."""
    value = (row.get(column) or "").strip()
    if value not in codes:
        raise DatasetError(f"{where}: {column} {value!r} is not one of {list(codes)}")
    return codes[value]


def find_dataset_folder(root: Path, marker: str, folder_names: Sequence[str], dataset: str) -> Path:
    """The folder holding `marker`: `root` itself or one of `folder_names` inside it (e.g. WILDS' `iwildcam_v2.0/`)."""
    if (root / marker).is_file():
        return root
    found = [root / name for name in folder_names if (root / name / marker).is_file()]
    if len(found) > 1:
        raise DatasetError(f"{root}: holds {' and '.join(f.name for f in found)}; pass one of them as `root`")
    if not found:
        inside = " or ".join(f"{name}/" for name in folder_names)
        raise DatasetError(f"{root}: no {marker} here{f' or in {inside}' if folder_names else ''} "
                           f"(dataset {dataset!r}; see data/README.md for the layout)")
    return found[0]


class CsvImageAdapter(DatasetAdapter):
    """Images listed one per row of a CSV file (`csv_path`); errors about an example also name its line.

    Subclasses read through `image_rows`, which records each example's CSV line in `row_lines`.
    """

    modality = "image"
    #: Folders --root may hold the dataset in (a release's own folder name), searched when --root lacks the CSV.
    folder_names: ClassVar[tuple[str, ...]] = ()
    csv_name: ClassVar[str] = "metadata.csv"
    #: Required columns, and the ones holding the example id and the image path.
    columns: ClassVar[tuple[str, ...]]
    id_column: ClassVar[str]
    file_column: ClassVar[str]

    def __init__(self, root: str | Path):
        super().__init__(root)
        self.folder = find_dataset_folder(self.root, self.csv_name, self.folder_names, self.name)
        self.csv_path = self.listing = self.folder / self.csv_name

    @property
    def image_root(self) -> Path:
        return self.folder

    def image_rows(self) -> Iterator[tuple[str, str, str, dict[str, str]]]:
        """Each row as (id, image path, "file, line N (id ...)" for errors, row); an empty id or path is an error."""
        self.row_lines = []
        for line, row in csv_rows(self.csv_path, self.columns):
            where = f"{self.csv_path}, line {line}"
            example_id = (row[self.id_column] or "").strip()
            if not example_id:
                raise DatasetError(f"{where}: empty {self.id_column}")
            where += f" (id {example_id!r})"
            filename = (row[self.file_column] or "").strip()
            if not filename:
                raise DatasetError(f"{where}: empty {self.file_column}")
            self.row_lines.append(line)
            yield example_id, filename, where, row
