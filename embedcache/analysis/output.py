"""Writing analysis outputs: output folders that are never someone else's, CSV tables and
deterministic JSON (the same inputs give byte-identical files)."""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

from embedcache.errors import ConfigError

#: Significant digits of every float in JSON outputs: enough for any metric, stable across platforms.
DIGITS = 6


def prepare_out_dir(path: str | Path, owned: Sequence[str]) -> Path:
    """Create `path`, or accept it when everything in it has a name the command writes (glob
    patterns `owned`): an earlier output, whole or cut short, whose files of the same names are
    then replaced. A folder holding anything else is refused, so an analysis never writes into a
    runs folder or someone's home; so is one this process may not write in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder")
    if path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if not any(fnmatch.fnmatchcase(p.name, o) for o in owned))
        if foreign:
            raise ConfigError(f"--out {path} holds files this command does not write (e.g. {foreign[0]}); choose a "
                              "new or empty folder")
    try:  # a read-only place is refused here, naming it, before any output is written
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot write there ({e.strerror or e}); make it writable or choose another "
                          "folder") from None
    return path


def slug(text: str) -> str:
    """A file-name-safe form of a group spec or value: "label*place" → "label-x-place"."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text.replace("*", "-x-")).strip("-") or "_"


def rounded(obj: Any, digits: int = DIGITS) -> Any:
    """`obj` with floats rounded to `digits` significant digits and NaN/inf as None (valid JSON)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Rounded, keys sorted, indented, newline-terminated."""
    path = Path(path)
    path.write_text(json.dumps(rounded(obj), sort_keys=True, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def write_csv(path: str | Path, rows: Sequence[dict]) -> Path:
    """A CSV of `rows` (columns in first-seen order; floats rounded as in JSON; None and NaN empty)."""
    path = Path(path)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in rounded(row).items()})
    return path
