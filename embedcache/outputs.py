"""Writing outputs: one policy for every command that writes a folder or a set of files, one CSV
writer and deterministic JSON.

The output policy (DESIGN.md, "Conventions users rely on"):

* A command owns only what it writes. Its folder gets a small ownership marker (`MARKER`: the
  command and the names it wrote), so a folder holding anything else (a user's own notes, another
  command's output, a runs folder) is refused before any work is done.
* A complete output is never replaced without `overwrite`, and then only once the new one is
  done: `OutputFolder.writing()` writes into a temporary sibling and swaps it in at the end. A
  failure or a kill leaves the old output as it was (a kill while writing also leaves the hidden
  sibling `.<name>.*.partial`, which can be deleted; one in the middle of the swap leaves the old
  output in `.<name>.*.replaced`, and the next write there puts it back first).
* A set of files next to each other (`tsne`'s .png and .csv) follows the same rules file by file
  (`FileSet`): each is written beside its target and renamed over it once all are written.

CSV files (`write_csv`) are UTF-8 with "\\n" line ends; a header row of the columns (first-seen order
unless given); a cell is quoted only when it holds a comma, a quote or a line break (quotes doubled,
as RFC 4180); floats are rounded to `DIGITS` significant digits (as in JSON, so the same inputs give
the same bytes); None, NaN and ±inf are empty cells; other values as `str()` writes them.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import embedcache
from embedcache.errors import ConfigError
from embedcache.faults import crash_point

#: Significant digits of every float in JSON and CSV outputs: enough for any metric, stable across platforms.
DIGITS = 6
#: The ownership marker inside an output folder.
MARKER = ".embedcache-output.json"


# ------------------------------------------------------------------------------------ output folders
class OutputFolder:
    """The folder `path` that `command` writes whole. Creating one checks the folder at once (so a
    command can check before its work): it must be new, empty, or an earlier output of `command`
    (by its marker), which only `overwrite` lets it replace. A folder without a marker is never
    taken for an earlier output, however its files are named: they may be a user's. Errors name
    the parameter `out`."""

    def __init__(self, path: str | Path, command: str, overwrite: bool = False):
        self.path, self.command, self.overwrite = Path(path), command, overwrite
        _recover(self.path)
        self.check()

    def check(self) -> None:
        """Raise ConfigError(param="out") if this command may not write the folder (see the class docstring)."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} is a file, not a folder", param="out")
        _check_writable(path)
        if not path.is_dir() or not any(path.iterdir()):
            return
        owner = read_marker(path)
        if owner is None:
            example = min(p.name for p in path.iterdir())
            raise ConfigError(f"{path} holds files this command did not write (e.g. {example}); choose a new or empty "
                              "folder", param="out")
        if owner["command"] != self.command:
            raise ConfigError(f"{path} holds the output of `{owner['command']}`; choose another folder", param="out")
        foreign = sorted(p.name for p in path.iterdir() if p.name != MARKER and p.name not in owner["files"])
        if foreign:
            raise ConfigError(f"{path} holds files `{self.command}` did not write (e.g. {foreign[0]}); choose a new "
                              "or empty folder", param="out")
        if not self.overwrite:
            raise ConfigError(f"{path} holds an earlier `{self.command}` output; pass `overwrite` to replace it, or "
                              "choose another folder", param="out")

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """A temporary sibling folder to write the output into; when the block ends without an error it
        gets the marker and replaces `path` (an earlier output is moved aside, then deleted). On an
        error it is deleted and `path` stays as it was."""
        self.check()  # again: the folder may have changed while the output was computed
        parent = self.path.absolute().parent
        staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=parent))
        try:
            yield staging
            if not (staging / MARKER).exists():  # a command may have marked it with more (the demo: its sizes)
                write_marker(staging, self.command)
            crash_point("output.written")
            _swap(staging, self.path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _check_writable(path: Path) -> None:
    """Refuse, naming it, an output folder this process may not write in, or whose parent (where the new
    output is made before it takes the folder's place) it may not write in; the parents are made here."""
    parent = path.absolute().parent
    for where in (parent, path) if path.is_dir() else (parent,):
        try:
            where.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=where):
                pass
        except OSError as e:
            raise ConfigError(f"{path}: cannot write there ({e.strerror or e}); make {where} writable or choose "
                              "another folder", param="out") from None


def _swap(new: Path, path: Path) -> None:
    """Put the folder `new` at `path`: a rename onto a missing or empty folder; otherwise the old one
    is renamed aside first (into `.<name>.*.replaced`) and deleted once the new one is in place."""
    try:
        os.replace(new, path)
        return
    except OSError:
        if not path.is_dir() or not any(path.iterdir()):
            raise
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".replaced", dir=new.parent))
    os.replace(path, old / path.name)
    crash_point("output.swap")
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def _recover(path: Path) -> None:
    """Finish a swap a kill interrupted: put the old output back where the new one never arrived, and
    delete old outputs whose replacement did arrive."""
    parent = path.absolute().parent
    if not parent.is_dir():
        return
    for leftover in sorted(parent.glob(f".{glob.escape(path.name)}.*.replaced")):
        if not path.exists() and (leftover / path.name).is_dir():
            os.replace(leftover / path.name, path)
        shutil.rmtree(leftover, ignore_errors=True)


def read_marker(folder: Path) -> dict | None:
    """The ownership marker of `folder` ({"command", "files", ...}), or None if it has no readable one."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("command"), str) \
            or not isinstance(marker.get("files"), list):
        return None
    return marker


def write_marker(folder: Path, command: str, files: Sequence[str] | None = None, **extra: Any) -> None:
    """Mark `folder` as `command`'s output holding `files` (default: every name in it now)."""
    names = sorted(p.name for p in folder.iterdir() if p.name != MARKER) if files is None else sorted(files)
    marker = {"command": command, "files": names, "embedcache_version": embedcache.__version__, **extra}
    (folder / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------- file sets
class FileSet:
    """Files a command writes side by side (not a folder of their own): none may exist unless
    `overwrite`; `writing()` gives each a temporary name beside it and renames them all over their
    targets once all are written. Errors name the parameter `param` (default `out`)."""

    def __init__(self, paths: Sequence[str | Path], overwrite: bool = False, param: str = "out"):
        self.paths, self.overwrite, self.param = [Path(p) for p in paths], overwrite, param
        self.check()

    def check(self) -> None:
        for path in self.paths:
            if path.is_dir():
                raise ConfigError(f"{path} is a folder; give a file name", param=self.param)
            if path.exists() and not self.overwrite:
                raise ConfigError(f"{path} exists; pass `overwrite` to replace it", param=self.param)

    @contextlib.contextmanager
    def writing(self) -> Iterator[list[Path]]:
        self.check()
        temporary = [p.parent / f".{p.stem}.{os.getpid()}.partial{p.suffix}" for p in self.paths]  # keeps the type
        try:
            self.paths[0].parent.mkdir(parents=True, exist_ok=True)
            yield temporary
            for written, path in zip(temporary, self.paths):
                os.replace(written, path)
        except OSError as e:
            raise ConfigError(f"{self.paths[0]}: cannot write there ({e.strerror or e})", param=self.param) from None
        finally:
            for written in temporary:
                written.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------- formats
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


def write_csv(path: str | Path, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> Path:
    """The one CSV writer (format in the module docstring). `columns`: the header, in order (default:
    every key of the rows in first-seen order); a row without a column gets an empty cell."""
    path = Path(path)
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in rounded(dict(row)).items()})
    return path
