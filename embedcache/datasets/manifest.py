"""`manifest`: a CSV with `id,path,label,split,<group columns...>` (images) or `id,text,...` (text)."""

from __future__ import annotations

from pathlib import Path

from embedcache.datasets.base import register_dataset, DatasetAdapter, numeric_if_possible, parse_labels, read_csv
from embedcache.errors import DatasetError
from embedcache.metadata import Metadata

RESERVED = ("id", "path", "text", "label", "split")


@register_dataset("manifest")
class Manifest(DatasetAdapter):
    """--root is the CSV file, or a folder holding `manifest.csv`. Image paths are relative to the
    CSV's folder. `label` may hold class indices or names (empty = unknown), `split` defaults to
    train, and every other column becomes a group."""


    def __init__(self, root: str | Path):
        super().__init__(root)
        self.csv_path = self.root / "manifest.csv" if self.root.is_dir() else self.root
        if not self.csv_path.is_file():
            raise DatasetError(f"{self.csv_path}: manifest CSV not found")
        columns, self._rows = read_csv(self.csv_path, required=["id"])
        kinds = [c for c in ("path", "text") if c in columns]
        if len(kinds) != 1:
            raise DatasetError(f"{self.csv_path}: needs exactly one of the columns 'path' (images) or 'text'")
        self.input_column = kinds[0]
        self.group_columns = [c for c in columns if c not in RESERVED]

    @property
    def modality(self) -> str:  # type: ignore[override]
        return "image" if self.input_column == "path" else "text"

    @property
    def image_root(self) -> Path:
        return self.csv_path.parent

    def read(self) -> tuple[Metadata, list[str]]:
        rows = self._rows
        for line, row in enumerate(rows, start=2):
            if not (row.get("id") or "").strip():
                raise DatasetError(f"{self.csv_path}, line {line}: empty id")
            if row.get(self.input_column) in (None, ""):
                raise DatasetError(f"{self.csv_path}, line {line}: empty {self.input_column!r}")
        labels, label_names = parse_labels([r.get("label") for r in rows], str(self.csv_path))
        return Metadata.from_values(
            ids=[r["id"].strip() for r in rows],
            labels=labels,
            splits=[r.get("split") or "train" for r in rows],
            groups={c: numeric_if_possible([r[c] for r in rows]) for c in self.group_columns},
            label_names=label_names,
        ), [r[self.input_column] for r in rows]
