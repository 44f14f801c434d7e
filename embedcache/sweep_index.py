"""`sweep.json`: what a sweep root holds, for whoever reads its records later.

A sweep root has one folder of run records per grid cell and this index, which lists the cells:
each one's `folder`, its `values` of the axes the sweep varied (the features — `cache` or
`dataset` — and every key of the plan's `[vary]` table), and `about` (the cache file, or the
dataset and backbone; for a cache, its dataset description, e.g. a Waterbirds variant's matched
share). `embedcache report` groups curves by those values, so one report of a sweep root shows
every cell. `embedcache sweep` writes it; this module only reads and writes the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable

from embedcache.errors import ConfigError

INDEX = "sweep.json"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class Cell:
    """One grid cell: its records' folder (relative to the root) and what it holds."""

    folder: str
    values: dict[str, Any]
    about: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SweepIndex:
    """A sweep root's index: the plan file it was last run from, the axes (name → values, in plan
    order) and the cells."""

    plan: str
    axes: dict[str, list]
    cells: list[Cell]

    def to_dict(self) -> dict:
        return {"version": VERSION, "plan": self.plan, "axes": self.axes,
                "cells": [dataclasses.asdict(cell) for cell in self.cells]}

    def write(self, root: Path) -> Path:
        """Write `root/sweep.json` whole (a temporary file renamed onto it)."""
        path = Path(root) / INDEX
        fresh = path.with_name(INDEX + ".writing")
        fresh.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(fresh, path)
        return path

    def cell(self, folder: str) -> Cell | None:
        return next((c for c in self.cells if c.folder == folder), None)


def read_index(root: str | Path) -> SweepIndex | None:
    """The index of the sweep root `root`, or None when it holds none."""
    path = Path(root) / INDEX
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cells = [Cell(c["folder"], dict(c["values"]), dict(c.get("about") or {})) for c in data["cells"]]
        return SweepIndex(str(data.get("plan", "")), dict(data["axes"]), cells)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path}: not a sweep index that embedcache wrote ({type(e).__name__}: {e}); run the "
                          "sweep again to rewrite it") from None


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """The paths with each sweep root replaced by its cells' folders that exist (so a report of a
    root reads every cell); other paths as they are."""
    result: list[Path] = []
    for path in map(Path, paths):
        index = read_index(path) if path.is_dir() else None
        if index is None:
            result.append(path)
            continue
        cells = [path / c.folder for c in index.cells if (path / c.folder).is_dir()]
        if not cells:
            raise ConfigError(f"{path}: a sweep root whose cells hold no records yet; run `embedcache sweep` first")
        result += cells
    return result


def cell_of(record: str | Path, _indexes: dict[Path, SweepIndex | None] | None = None) -> Cell | None:
    """The cell of the sweep whose root holds this record's folder, or None (a record of no sweep)."""
    folder = Path(record).resolve().parent
    root = folder.parent
    if _indexes is None:
        index = read_index(root)
    else:
        if root not in _indexes:
            _indexes[root] = read_index(root)
        index = _indexes[root]
    return None if index is None else index.cell(folder.name)


def value_text(value: Any) -> str:
    """An axis value as people write it: 5, 0.5, 5,5,10,20, val,test, true."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(value_text(v) for v in value)
    return str(value)
