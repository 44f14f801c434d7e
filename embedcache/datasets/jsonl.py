"""`jsonl`: text examples, one JSON object per line: `{"id", "text", "label", "split", <groups...>}`."""

from __future__ import annotations

import json
from pathlib import Path

from embedcache.datasets.base import register_dataset, DatasetAdapter, parse_labels
from embedcache.errors import DatasetError
from embedcache.metadata import Metadata

RESERVED = ("id", "text", "label", "split")


@register_dataset("jsonl")
class JsonLines(DatasetAdapter):
    """--root is the .jsonl file. `label` holds class indices or names (missing = unknown), `split`
    defaults to train; every other scalar field becomes a group. `-o text_field=review` reads the
    text from another field."""

    modality = "text"

    def __init__(self, root: str | Path, text_field: str = "text"):
        super().__init__(root)
        if not self.root.is_file():
            raise DatasetError(f"{self.root}: jsonl expects a .jsonl file")
        self.text_field = text_field

    def options(self) -> dict:
        return {"text_field": self.text_field}

    def read(self) -> tuple[Metadata, list[str]]:
        records = []
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
        group_fields = sorted({k for r in records for k, v in r.items()
                               if k not in RESERVED and k != self.text_field and isinstance(v, (str, int, bool))})
        for field in group_fields:
            lacking = next((i for i, r in enumerate(records) if field not in r), None)
            if lacking is not None:
                raise DatasetError(f"{self.root}: record with id {records[lacking]['id']!r} lacks group field {field!r}")
        labels, label_names = parse_labels([r.get("label") for r in records], str(self.root))
        return Metadata.from_values(
            ids=[str(r["id"]) for r in records],
            labels=labels,
            splits=[str(r.get("split") or "train") for r in records],
            groups={field: [r[field] for r in records] for field in group_fields},
            label_names=label_names,
        ), [str(r[self.text_field]) for r in records]
