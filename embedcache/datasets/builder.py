"""What the dataset builders share: their output folder, seeded random streams, and the files they write.

A builder writes into `build_folder(...).writing()`, a temporary sibling of its folder that replaces
the folder only once the build is complete (see `embedcache.outputs`): its images first, then
`metadata.csv`, then its build record `build.json` (parameters, sources, counts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

import embedcache
from embedcache.outputs import OutputFolder

BUILD_RECORD = "build.json"


def build_folder(out: Path, builder: str, overwrite: bool) -> OutputFolder:
    """The folder a builder writes, checked: new, empty, or an earlier build of `builder` (replaced only
    with `overwrite`)."""
    return OutputFolder(out, builder, overwrite)


def stage_rng(seed: int, stage: int) -> np.random.Generator:
    """An independent random stream per build stage, so changing one stage's draws leaves the others alone."""
    return np.random.default_rng([seed, stage])


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
