"""Output files of the workflow commands: checked before any work, written whole or not at all.

A table goes to `<name>.partial` and is renamed over `<name>` when complete, so a killed command
never leaves half a file under the real name; an existing file is replaced only with `overwrite`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from embedcache.errors import ConfigError


def check_out(path: str | Path, overwrite: bool, suffixes: Sequence[str], option: str = "--out") -> Path:
    """`path` if it has one of `suffixes` and may be written; ConfigError naming `option` otherwise."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"{option} {path}: the name must end in {' or '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise ConfigError(f"{option} {path} already exists; pass --overwrite to replace it")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{option} {path} is not a file")
    return path


def _replace(partial: Path, path: Path) -> Path:
    os.replace(partial, path)
    return path


def write_table(path: str | Path, columns: Mapping[str, Sequence | np.ndarray], overwrite: bool = False) -> Path:
    """A table as CSV (floats to 6 significant digits, None empty) or Parquet, by the file's suffix."""
    path = check_out(path, overwrite, (".csv", ".parquet"))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({k: (v if isinstance(v, np.ndarray) else list(v)) for k, v in columns.items()}),
                       partial)
    else:
        from embedcache.analysis.output import write_csv

        names = list(columns)
        values = [v.tolist() if isinstance(v, np.ndarray) else list(v) for v in columns.values()]
        rows = [dict(zip(names, row)) for row in zip(*values)]
        if rows:
            write_csv(partial, rows)
        else:
            partial.write_text(",".join(names) + "\n", encoding="utf-8")
    return _replace(partial, path)


def write_json(path: str | Path, obj: Any, overwrite: bool = False) -> Path:
    """JSON (indented, UTF-8), through a partial file."""
    path = check_out(path, overwrite, (".json",))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return _replace(partial, path)
