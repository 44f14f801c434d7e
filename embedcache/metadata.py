"""Per-example metadata shared by datasets, caches, the AL loop and metrics.

`Metadata` holds, one row per example: a unique string id, an int64 label (-1 = unknown), a split
code into `split_names`, and any number of categorical group columns (codes into their names).
Groups are attributes the model never sees (background place, product category, user, camera
location); evaluation and analysis slice by them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections import Counter
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np

from embedcache.errors import ConfigError, DatasetError

#: Splits in the order WILDS and the paper use; any other split name sorts after these.
CANONICAL_SPLITS = ("train", "val", "test", "id_val", "id_test")

#: Name under which the label column can be used wherever a group name is accepted.
LABEL = "label"

#: Row index → where that row is, for error messages, e.g. "data.csv, line 7 (id 'x')".
Locate = Callable[[int], str]

#: A whole number as text: "3", "-1", "+2", and "2.0" (how pandas writes an integer column with gaps).
_INTEGER = re.compile(r"[+-]?\d+(\.0*)?")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_MAX_CLASS = 2**31 - 1


def encode(values: Sequence[Hashable], order: Sequence[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Encode categorical values as int64 codes and their names.

    With `order`, names are taken from it (values must be among them, compared as strings); else
    the distinct values are sorted (numerically when all are numbers) and stringified.
    """
    as_str = [str(v) for v in values]
    if order is None:
        distinct = set(values)
        if all(isinstance(v, (int, np.integer, float, np.floating)) for v in distinct):
            names = tuple(str(v) for v in sorted(distinct))
        else:
            names = tuple(sorted({str(v) for v in distinct}))
    else:
        names = tuple(str(v) for v in order)
        unknown = sorted(set(as_str) - set(names))
        if unknown:
            raise DatasetError(f"values {unknown[:5]} are not among the allowed {list(names)}")
    index = {name: i for i, name in enumerate(names)}
    return np.fromiter((index[v] for v in as_str), dtype=np.int64, count=len(as_str)), names


def split_order(names: Sequence[str]) -> tuple[str, ...]:
    """Canonical split order: train, val, test, id_val, id_test, then the rest alphabetically."""
    distinct = set(names)
    known = [s for s in CANONICAL_SPLITS if s in distinct]
    return tuple(known + sorted(distinct - set(CANONICAL_SPLITS)))


# ---------------------------------------------------------------------- strict parsing of metadata read from text
# Every adapter that reads ids, labels, splits or groups from a table (manifest CSV, jsonl, `embedcache import`'s
# CSV or Parquet) parses them here, so one rule holds everywhere. Cells are stripped of surrounding whitespace.

def _cell_text(value: object) -> str:
    return value.strip() if isinstance(value, str) else str(value)


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def _memoised(function: Callable[[object], object], values: Sequence[object]) -> list:
    """[function(v) for v in values], computed once per distinct value (columns repeat a few values a million
    times); unhashable values (JSON lists) are computed each time."""
    memo: dict = {}
    out = []
    for value in values:
        try:
            result = memo[value]
        except KeyError:
            result = memo[value] = function(value)
        except TypeError:
            result = function(value)
        out.append(result)
    return out


def parse_ids(values: Sequence[object], locate: Locate, column: str = "id") -> list[str]:
    """Example ids as stripped strings (integers are written in decimal); empty cells, other types and repeats
    are errors naming the rows."""
    ids = [v.strip() if type(v) is str else v for v in values]
    for i, value in enumerate(ids):
        if type(value) is not str:
            if _is_missing(value):
                raise DatasetError(f"{locate(i)}: empty {column}")
            if isinstance(value, bool) or not isinstance(value, int):
                raise DatasetError(f"{locate(i)}: {column} {value!r} is a {type(value).__name__}; ids must be text "
                                   "or integers")
            ids[i] = str(value)
        elif not value:
            raise DatasetError(f"{locate(i)}: empty {column}")
    if len(set(ids)) != len(ids):
        first_row: dict[str, int] = {}
        repeats = [(first_row[v], i) for i, v in enumerate(ids) if first_row.setdefault(v, i) != i]
        first, again = repeats[0]
        more = f"; {len(repeats)} repeated ids in all, e.g. {[ids[j] for _, j in repeats[:5]]}" if len(repeats) > 1 \
            else ""
        raise DatasetError(f"{locate(again)}: duplicate {column} {ids[again]!r}, first at {locate(first)}{more}")
    return ids


def _label_kind(value: object) -> tuple[str, int | str | None, str]:
    """(kind, value, how the cell is shown in messages): kind "unknown", "index" (an int), "number" (not a whole
    number), "name" (text), or "invalid" (neither: booleans, lists...)."""
    if _is_missing(value):
        return "unknown", None, repr(value)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return "invalid", None, repr(value)
    if isinstance(value, int):
        return "index", value, repr(value)
    if isinstance(value, float):
        return ("index", int(value), repr(value)) if value.is_integer() else ("number", None, repr(value))
    text = value.strip()
    if _INTEGER.fullmatch(text):
        return "index", int(text.partition(".")[0]), repr(text)
    return ("number" if _NUMBER.fullmatch(text) else "name"), text, repr(text)


def parse_labels(values: Sequence[object], locate: Locate, column: str = "label"
                 ) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Class labels as int64 codes (-1 = unknown) and their names (None for a column of indices).

    A column is either class indices (whole numbers, e.g. 3 or 3.0) or class names (sorted, then indexed);
    an empty cell, None, NaN or -1 means unknown. A column mixing the two, a fractional number, or a negative
    index other than -1 is an error naming the row and value: nothing is renumbered behind the user's back.
    """
    kinds = _memoised(_label_kind, values)
    counts = Counter(kind for kind, _, _ in kinds)
    first = {kind: next(i for i, (k, _, _) in enumerate(kinds) if k == kind) for kind in counts}

    def cell(i: int) -> str:
        return f"{column} {kinds[i][2]}"

    if "invalid" in first:
        i = first["invalid"]
        raise DatasetError(f"{locate(i)}: {cell(i)} is neither a class index nor a class name")
    if "name" not in first and "number" not in first:
        bad = next((i for i, (k, v, _) in enumerate(kinds) if k == "index" and not -1 <= v <= _MAX_CLASS), None)
        if bad is not None:
            raise DatasetError(f"{locate(bad)}: {cell(bad)} is not a class index (0, 1, 2, ...; -1 or an empty cell "
                               "means unknown)")
        return np.fromiter((-1 if v is None else v for _, v, _ in kinds), dtype=np.int64, count=len(kinds)), None
    if "index" not in first and "number" not in first:
        names = tuple(sorted({v for k, v, _ in kinds if k == "name"}))
        index = {name: code for code, name in enumerate(names)}
        return np.fromiter((-1 if k == "unknown" else index[v] for k, v, _ in kinds), dtype=np.int64,
                           count=len(kinds)), names
    if "index" in first and counts["index"] + counts["number"] >= counts["name"]:  # indices with a stray value
        i = min(first.get("name", len(kinds)), first.get("number", len(kinds)))
        example = first["index"]
        raise DatasetError(f"{locate(i)}: {cell(i)} is not a whole-number class index, but the column holds class "
                           f"indices (e.g. {locate(example)}: {kinds[example][2]}); fix the cell, or leave it empty "
                           "if the label is unknown")
    if "name" not in first:  # fractional numbers only
        i = first["number"]
        raise DatasetError(f"{locate(i)}: {cell(i)} is not a whole-number class index")
    i = min(first.get("index", len(kinds)), first.get("number", len(kinds)))
    example = first["name"]
    raise DatasetError(f"{locate(i)}: {cell(i)} is a number in a column of class names (e.g. {locate(example)}: "
                       f"{kinds[example][2]}); write every label as a name or every label as an index")


def require_label_column(has_labels: bool, unlabelled: bool, source: str, column: str, option: str,
                         noun: str = "column") -> None:
    """A table without its label column is refused unless the user says the data is unlabelled (and one that
    has the column while the user says it is unlabelled is a contradiction)."""
    if not has_labels and not unlabelled:
        raise DatasetError(f"{source}: no {column!r} {noun}. Add one (class indices or names; an empty value means "
                           f"unknown), or pass {option} if the data is unlabelled (every label unknown)")
    if has_labels and unlabelled:
        raise DatasetError(f"{source}: has a {column!r} {noun}, but {option} says the data is unlabelled; drop "
                           "one or the other")


def split_names_option(value: str | Sequence[str] | None, option: str) -> tuple[str, ...] | None:
    """The split names a user allows ("train,holdout" or a sequence), or None for the canonical ones."""
    if value is None:
        return None
    names = tuple(n.strip() for n in (value.split(",") if isinstance(value, str) else value))
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"{option}: expected distinct, non-empty split names such as train,val,holdout; "
                          f"got {value!r}")
    return names


def parse_splits(values: Sequence[object], locate: Locate, allowed: Sequence[str] | None, own_splits_hint: str,
                 column: str = "split", default: str = "train") -> list[str]:
    """Split names, each among `allowed` (None: the canonical train, val, test, id_val, id_test); an empty cell
    means `default`. Anything else is an error naming the row, the value and the closest allowed name, so a
    typo never becomes a split of its own. `own_splits_hint` says how to allow other names (e.g. "--splits")."""
    allowed = tuple(allowed) if allowed is not None else CANONICAL_SPLITS
    valid = set(allowed)
    splits = _memoised(lambda value: default if _is_missing(value) else _cell_text(value), values)
    for i, name in enumerate(splits):
        if name not in valid:
            value = values[i]
            if _is_missing(value):
                raise DatasetError(f"{locate(i)}: empty {column}, which means {default}, but {default} is not among "
                                   f"the split names {list(allowed)}; fill in the cell")
            close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6) or \
                difflib.get_close_matches(name.lower(), allowed, n=1, cutoff=0.6)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            raise DatasetError(f"{locate(i)}: {column} {name!r} is not one of {list(allowed)}{guess} "
                               f"(to use split names of your own, list them with {own_splits_hint})")
    return splits


def group_values(values: Sequence[object]) -> list[Hashable]:
    """A group column's cells, stripped; as ints when every one is an integer, so groups sort 1, 2, 10 rather than
    1, 10, 2. Missing cells (None) read as the empty string, as an empty CSV cell does."""
    cells = _memoised(lambda v: "" if v is None else v.strip() if isinstance(v, str) else v, values)
    distinct = set(cells)
    if all(isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and re.fullmatch(r"-?\d+", v)
           for v in distinct):
        return _memoised(int, cells)
    return _memoised(str, cells)


@dataclasses.dataclass
class Metadata:
    """Everything about a set of examples except their inputs and embeddings."""

    ids: np.ndarray
    label: np.ndarray
    split: np.ndarray
    split_names: tuple[str, ...]
    groups: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    group_names: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    label_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=object)
        self.label = np.asarray(self.label, dtype=np.int64)
        self.split = np.asarray(self.split, dtype=np.int8)
        self.split_names = tuple(self.split_names)
        self.groups = {k: np.asarray(v, dtype=np.int64) for k, v in self.groups.items()}
        self.group_names = {k: tuple(v) for k, v in self.group_names.items()}
        if self.label_names is not None:
            self.label_names = tuple(self.label_names)

    @classmethod
    def from_values(
        cls,
        ids: Sequence[str],
        labels: Sequence[int],
        splits: Sequence[str],
        groups: Mapping[str, Sequence[Hashable]] | None = None,
        label_names: Sequence[str] | None = None,
        group_orders: Mapping[str, Sequence[str]] | None = None,
    ) -> "Metadata":
        """Build from plain values: split names and raw group values are encoded here.

        `group_orders` fixes the names (and so the codes) of some groups, e.g. place → ("land", "water"),
        so a group keeps its codes even where a subset lacks one of its values.
        """
        split_names = split_order(splits)
        split_codes, _ = encode(splits, split_names)
        group_codes, group_names = {}, {}
        for name, values in (groups or {}).items():
            group_codes[name], group_names[name] = encode(values, (group_orders or {}).get(name))
        return cls(
            ids=np.asarray(ids, dtype=object),
            label=np.asarray(labels, dtype=np.int64),
            split=split_codes,
            split_names=split_names,
            groups=group_codes,
            group_names=group_names,
            label_names=None if label_names is None else tuple(label_names),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def validate(self, source: str = "dataset") -> None:
        """Raise DatasetError naming `source` if columns disagree in length, ids repeat or codes are out of range."""
        n = len(self.ids)
        columns = {"label": self.label, "split": self.split, **{f"groups/{k}": v for k, v in self.groups.items()}}
        for name, column in columns.items():
            if len(column) != n:
                raise DatasetError(f"{source}: column {name!r} has {len(column)} rows, ids have {n}")
        if any(not isinstance(i, str) or not i for i in self.ids):
            raise DatasetError(f"{source}: every id must be a non-empty string")
        if len(set(self.ids)) != n:
            dupes = [i for i, c in Counter(self.ids).items() if c > 1]
            raise DatasetError(f"{source}: {len(dupes)} duplicate id(s), e.g. {dupes[:5]}")
        if n and (self.split.min() < 0 or self.split.max() >= len(self.split_names)):
            raise DatasetError(f"{source}: split codes outside {list(self.split_names)}")
        if n and self.label.min() < -1:
            raise DatasetError(f"{source}: labels must be class indices, or -1 where unknown")
        if self.label_names is not None and n and self.label.max() >= len(self.label_names):
            raise DatasetError(f"{source}: label {int(self.label.max())} has no name in {list(self.label_names)}")
        for name, codes in self.groups.items():
            names = self.group_names.get(name)
            if names is None:
                raise DatasetError(f"{source}: group {name!r} has no names")
            if n and (codes.min() < 0 or codes.max() >= len(names)):
                raise DatasetError(f"{source}: group {name!r} has codes outside its {len(names)} names")

    def fingerprint(self, inputs: Sequence[str] | str | None = None) -> str:
        """Which examples these are: the sha256 of ids, labels, splits, groups and `inputs`, the one
        definition behind a cache's `dataset.manifest_sha256` and a run record's `data`.

        `inputs` is what the examples are made of when that is known: a dataset adapter's image paths
        or texts (one per row), or, for a cache written from vectors (`embedcache import`,
        `EmbeddingCache.write`), the sha256 of the vectors (`recipe.vectors_digest`); None when
        unknown. Label names are left out: renaming classes does not change the examples. The value
        for an adapter's inputs is the manifest hash embedcache has always written, so caches and
        records of real datasets keep their identity.
        """
        from embedcache.recipe import sha256_json

        return sha256_json([self.ids.tolist(), None if inputs is None else inputs if isinstance(inputs, str)
                            else list(inputs), self.label.tolist(), self.split.tolist(), list(self.split_names),
                            {k: v.tolist() for k, v in self.groups.items()},
                            {k: list(v) for k, v in self.group_names.items()}])

    def take(self, rows: np.ndarray | slice) -> "Metadata":
        """The metadata of a subset of rows, in the order given."""
        return dataclasses.replace(
            self,
            ids=self.ids[rows],
            label=self.label[rows],
            split=self.split[rows],
            groups={k: v[rows] for k, v in self.groups.items()},
        )

    @property
    def num_classes(self) -> int:
        if self.label_names is not None:
            return len(self.label_names)
        return int(self.label.max()) + 1 if len(self.label) else 0

    def split_code(self, name: str) -> int:
        try:
            return self.split_names.index(name)
        except ValueError:
            raise ConfigError(f"unknown split {name!r}; this data has {list(self.split_names)}") from None

    def split_indices(self, name: str) -> np.ndarray:
        """Row indices of one split, in row order."""
        return np.flatnonzero(self.split == self.split_code(name))

    def column(self, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """Codes and names of a group column, or of the label when `name` is "label"."""
        if name == LABEL:
            names = self.label_names or tuple(str(c) for c in range(self.num_classes))
            return self.label, names
        if name not in self.groups:
            known = [LABEL, *self.groups]
            raise ConfigError(f"unknown group {name!r}; this data has {known}")
        return self.groups[name], self.group_names[name]
