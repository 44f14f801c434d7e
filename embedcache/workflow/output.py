"""Output files of the workflow commands: checked before any work, written whole or not at all.

They follow the one output policy of `embedcache.outputs` (`FileSet`: written beside the target
and renamed over it when complete, an existing file replaced only with `overwrite`); this module
adds the formats: a table as CSV or Parquet by its suffix, and JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from embedcache.errors import ConfigError
from embedcache.outputs import FileSet, write_csv


def check_out(path: str | Path, overwrite: bool, suffixes: Sequence[str], param: str = "out") -> FileSet:
    """The file `path` as a `FileSet` if it has one of `suffixes` and may be written; ConfigError naming
    `param` otherwise."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"{path}: the name must end in {' or '.join(suffixes)}", param=param)
    return FileSet([path], overwrite, param)


def write_table(path: str | Path, columns: Mapping[str, Sequence | np.ndarray], overwrite: bool = False) -> Path:
    """A table as CSV (the project's one CSV format) or Parquet, by the file's suffix."""
    files = check_out(path, overwrite, (".csv", ".parquet"))
    with files.writing() as (partial,):
        if partial.suffix.lower() == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({k: (v if isinstance(v, np.ndarray) else list(v)) for k, v in columns.items()}),
                           partial)
        else:
            names = list(columns)
            values = [v.tolist() if isinstance(v, np.ndarray) else list(v) for v in columns.values()]
            write_csv(partial, [dict(zip(names, row)) for row in zip(*values)], columns=names)
    return files.paths[0]


def write_json(path: str | Path, obj: Any, overwrite: bool = False) -> Path:
    """JSON (indented, UTF-8), written whole or not at all."""
    files = check_out(path, overwrite, (".json",))
    with files.writing() as (partial,):
        partial.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return files.paths[0]
