"""Per-example metadata shared by datasets, caches, the AL loop and metrics.

`Metadata` holds, one row per example: a unique string id, an int64 label (-1 = unknown), a split
code into `split_names`, and any number of categorical group columns (codes into their names).
Groups are attributes the model never sees (background place, product category, user, camera
location); evaluation and analysis slice by them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Hashable, Mapping, Sequence

import numpy as np

from embedcache.errors import ConfigError, DatasetError

#: Splits in the order WILDS and the paper use; any other split name sorts after these.
CANONICAL_SPLITS = ("train", "val", "test", "id_val", "id_test")

#: Name under which the label column can be used wherever a group name is accepted.
LABEL = "label"


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

    def fingerprint(self) -> str:
        """sha256 of every column and name: equal for equal metadata, whatever the arrays' memory layout."""
        from embedcache.recipe import sha256_json

        return sha256_json([self.ids.tolist(), self.label.tolist(), self.split.tolist(), list(self.split_names),
                            {k: v.tolist() for k, v in sorted(self.groups.items())},
                            {k: list(v) for k, v in sorted(self.group_names.items())},
                            None if self.label_names is None else list(self.label_names)])

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
