"""`jsonl`: text examples, one JSON object per line: `{"id", "text", "label", "split", <groups...>}`."""

from __future__ import annotations

import json
from pathlib import Path

from embedcache.datasets.base import DatasetAdapter, flag_option, register_dataset
from embedcache.errors import DatasetError
from embedcache.metadata import (Metadata, group_values, parse_ids, parse_labels, parse_splits, require_label_column,
                                 split_names_option)

RESERVED = ("id", "text", "label", "split")


@register_dataset("jsonl")
class JsonLines(DatasetAdapter):
    """--root is the .jsonl file. `label` holds class indices or names (missing or null = unknown), `split`
    one of train, val, test, id_val, id_test (missing = train); every other scalar field becomes a group.

    Options: `-o text_field=review` reads the text from another field; `-o unlabelled=true` for data
    without labels; `-o splits=train,holdout` to allow other split names."""

    modality = "text"

    def __init__(self, root: str | Path, text_field: str = "text", unlabelled: bool | str = False,
                 splits: str | None = None):
        super().__init__(root)
        if not self.root.is_file():
            raise DatasetError(f"{self.root}: jsonl expects a .jsonl file")
        self.text_field = text_field
        self.unlabelled = flag_option(unlabelled, "unlabelled")
        self.splits = split_names_option(splits, "-o splits")
        self.listing = self.root

    def options(self) -> dict:
        return {"text_field": self.text_field, "unlabelled": self.unlabelled, "splits": self.splits}

    def read(self) -> tuple[Metadata, list[str]]:
        records, lines = [], []
        with open(self.root, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{self.root}, line {line_no}: not JSON ({e})") from None
                for key in ("id", self.text_field):
                    if not isinstance(record, dict) or record.get(key) in (None, ""):
                        raise DatasetError(f"{self.root}, line {line_no}: missing {key!r}")
                records.append(record)
                lines.append(line_no)
        self.row_lines = lines
        ids = parse_ids([r["id"] for r in records], lambda i: f"{self.root}, line {lines[i]}")

        def at(i: int) -> str:
            return f"{self.root}, line {lines[i]} (id {ids[i]!r})"

        group_fields = sorted({k for r in records for k, v in r.items()
                               if k not in RESERVED and k != self.text_field and isinstance(v, (str, int, bool))})
        for field in group_fields:
            lacking = next((i for i, r in enumerate(records) if field not in r), None)
            if lacking is not None:
                raise DatasetError(f"{at(lacking)}: lacks group field {field!r}")
        has_labels = any("label" in r for r in records)
        require_label_column(has_labels, self.unlabelled, str(self.root), "label", "-o unlabelled=true", "field")
        labels, label_names = (parse_labels([r.get("label") for r in records], at) if has_labels
                               else ([-1] * len(records), None))
        splits = parse_splits([r.get("split") for r in records], at, self.splits, "-o splits=NAME,NAME,...")
        return Metadata.from_values(
            ids=ids,
            labels=labels,
            splits=splits,
            groups={field: group_values([r[field] for r in records]) for field in group_fields},
            label_names=label_names,
        ), [str(r[self.text_field]) for r in records]
