"""What the dataset builders share: a guarded output folder, seeded random streams, and the files they write.

A builder writes its images first, then `metadata.csv`, then its build record `build.json` (parameters,
sources, counts): a folder without `build.json` is an interrupted build.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

import embedcache
from embedcache.errors import ConfigError

BUILD_RECORD = "build.json"


def prepare_output(out: Path, overwrite: bool) -> None:
    """Create `out`; an existing non-empty folder is refused unless `overwrite` (then files are written over)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} exists and is not empty; pass --overwrite to write over it")
    out.mkdir(parents=True, exist_ok=True)


def stage_rng(seed: int, stage: int) -> np.random.Generator:
    """An independent random stream per build stage, so changing one stage's draws leaves the others alone."""
    return np.random.default_rng([seed, stage])


def write_metadata_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_build_record(out: Path, record: Mapping) -> dict:
    """Write `build.json` (the record plus the embedcache version) and return what was written."""
    record = {**record, "embedcache_version": embedcache.__version__}
    (out / BUILD_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return record


def group_counts(rows: Sequence[Mapping], split_names: Mapping[str, str], label_names: Sequence[str],
                 place_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Rows per split and (label, place) subgroup, e.g. {"train": {"landbird/land": 3498, ...}}."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        split = counts.setdefault(split_names[str(row["split"])], {
            f"{label}/{place}": 0 for label in label_names for place in place_names})
        split[f"{label_names[int(row['y'])]}/{place_names[int(row['place'])]}"] += 1
    return counts
