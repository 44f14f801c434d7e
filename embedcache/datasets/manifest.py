"""`manifest`: a CSV with `id,path,label,split,<group columns...>` (images) or `id,text,...` (text)."""

from __future__ import annotations

from pathlib import Path

from embedcache.datasets.base import (DatasetAdapter, csv_columns, csv_rows, flag_option, register_dataset,
                                      require_all_cells)
from embedcache.errors import DatasetError
from embedcache.metadata import (Metadata, group_values, parse_ids, parse_labels, parse_splits,
                                 require_label_column, split_names_option)

RESERVED = ("id", "path", "text", "label", "split")


@register_dataset("manifest")
class Manifest(DatasetAdapter):
    """--root is the CSV file, or a folder holding `manifest.csv`. Image paths are relative to the
    CSV's folder and may not lead out of it. `label` holds class indices or class names (empty = unknown),
    `split` one of train, val, test, id_val, id_test (empty or no column = train), and every other column
    becomes a group.

    Options: `-o unlabelled=true` for data without a label column; `-o splits=train,holdout` to allow
    other split names; `-o allow_outside_root=true` to read image paths outside the CSV's folder."""

    outside_root_option = "-o allow_outside_root=true"

    def __init__(self, root: str | Path, unlabelled: bool | str = False, splits: str | None = None,
                 allow_outside_root: bool | str = False):
        super().__init__(root)
        self.csv_path = self.listing = self.root / "manifest.csv" if self.root.is_dir() else self.root
        if not self.csv_path.is_file():
            raise DatasetError(f"{self.csv_path}: manifest CSV not found")
        self.unlabelled = flag_option(unlabelled, "unlabelled")
        self.splits = split_names_option(splits, "-o splits")
        self.allow_outside_root = flag_option(allow_outside_root, "allow_outside_root")
        self.columns = csv_columns(self.csv_path)
        if "id" not in self.columns:
            raise DatasetError(f"{self.csv_path}: missing column(s) ['id']; found {self.columns}")
        kinds = [c for c in ("path", "text") if c in self.columns]
        if len(kinds) != 1:
            raise DatasetError(f"{self.csv_path}: needs exactly one of the columns 'path' (images) or 'text'")
        self.input_column = kinds[0]
        require_label_column("label" in self.columns, self.unlabelled, str(self.csv_path), "label",
                             "-o unlabelled=true")
        self.group_columns = [c for c in self.columns if c not in RESERVED]

    def options(self) -> dict:
        return {"unlabelled": self.unlabelled, "splits": self.splits, "allow_outside_root": self.allow_outside_root}

    @property
    def modality(self) -> str:  # type: ignore[override]
        return "image" if self.input_column == "path" else "text"

    @property
    def image_root(self) -> Path:
        return self.csv_path.parent

    def read(self) -> tuple[Metadata, list[str]]:
        lines, rows = [], []
        for line, row in csv_rows(self.csv_path, ["id"]):
            require_all_cells(row, f"{self.csv_path}, line {line}", len(self.columns))
            lines.append(line)
            rows.append(row)
        self.row_lines = lines

        def at_line(i: int) -> str:
            return f"{self.csv_path}, line {lines[i]}"

        ids = parse_ids([r["id"] for r in rows], at_line)

        def at(i: int) -> str:
            return f"{at_line(i)} (id {ids[i]!r})"

        inputs = []
        for i, row in enumerate(rows):
            value = row[self.input_column] or ""
            if not value.strip():
                raise DatasetError(f"{at(i)}: empty {self.input_column!r}")
            inputs.append(value.strip() if self.input_column == "path" else value)
        labels, label_names = (parse_labels([r["label"] for r in rows], at) if "label" in self.columns
                               else ([-1] * len(rows), None))
        splits = parse_splits([r.get("split") for r in rows], at, self.splits, "-o splits=NAME,NAME,...")
        return Metadata.from_values(
            ids=ids,
            labels=labels,
            splits=splits,
            groups={c: group_values([r[c] for r in rows]) for c in self.group_columns},
            label_names=label_names,
        ), inputs
