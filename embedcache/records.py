"""Run records: one JSONL file per (strategy, seed) run; everything the analysis reads.

Line 1 is the header (`"type": "header"`): strategy, seed, mode, the resolved protocol, the
learner config, the features `fingerprint` (cache recipe in linear mode, backbone recipe in
finetune mode), the `data` fingerprint (the dataset manifest's sha256), a human `backbone` label, library versions, the number of rounds planned
(`n_rounds`), the seed set (`seed_ids` and their group values in `seed_groups`), and the pool's
group counts (`pool_counts`: column → value → count over the pool split, the base rate the
upsampling analysis compares acquisitions with).

Then one line per round (`"type": "round"`): `round`, `n_labeled` (examples the round's model was
trained on), `metrics` (split → metrics dict, see `embedcache.metrics.evaluate`), `training`
(`steps`, `loss_initial`, `loss_final`, `stopped_by`), `acquired` (`ids`, `scores`, and `groups`:
column → value per acquired id; the batch this round's model chose, labelled from the next round
on; empty in the last round), `pool_size` (candidates scored) and `seconds`.

Lines are appended and flushed one at a time, so a killed run leaves whole lines plus at most one
partial last line, which readers ignore and writers truncate before resuming. (No fsync: a flushed
line survives the process being killed; only a power cut can lose the last rounds, which then
rerun. fsync would cost more than a whole linear-mode round.)

One writer at a time: a writer holds an OS lock (`flock`) on `<record>.lock`, which names it (pid,
host, since when). The OS drops the lock when its process dies, however it dies, so a rerun after
a kill is never blocked; readers never lock. A line that is not what a record holds (not JSON, not
an object, a round out of order) stops readers with a message naming the file and line;
`repair_run` keeps the header and the intact rounds before it, and the original beside it.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import itertools
import json
import os
import socket
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

import numpy as np

from embedcache.errors import ConfigError, EmbedcacheError
from embedcache.recipe import canonical_json

RECORD_SCHEMA = 1
#: Header fields that define a run: a record is resumed only if all of them are equal.
IDENTITY_FIELDS = ("schema", "mode", "strategy", "seed", "protocol", "learner", "fingerprint", "data", "n_rounds")
#: Fields every header and every round line must have, with their JSON types.
_HEADER_FIELDS = {"strategy": str, "seed": int, "n_rounds": int, "fingerprint": str, "seed_ids": list}
_ROUND_FIELDS = {"round": int, "n_labeled": int, "metrics": dict, "acquired": dict}
_JSON_KINDS = {list: "array", int: "number", float: "number", str: "string", bool: "boolean", type(None): "null"}


class RecordError(EmbedcacheError):
    """A run record is malformed, or belongs to another configuration."""


class RecordLockedError(EmbedcacheError):
    """Another live process is writing this run record."""


def record_path(out_dir: str | Path, strategy: str, seed: int) -> Path:
    return Path(out_dir) / f"{strategy}-seed{seed}.jsonl"


def unwritable(folder: Path, error: OSError) -> ConfigError:
    """The one-line error for an output folder the OS refuses to write in (or to create)."""
    what = f"{error.strerror or error}" + (f": {error.filename}" if error.filename not in (None, str(folder)) else "")
    return ConfigError(f"cannot write run records in {folder} ({what}): make the folder writable, or give `al` "
                       "another --out")


@dataclasses.dataclass
class Run:
    """One run record read back: its header and its complete round lines."""

    path: Path
    header: dict
    rounds: list[dict]

    @property
    def strategy(self) -> str:
        return self.header["strategy"]

    @property
    def seed(self) -> int:
        return int(self.header["seed"])

    @property
    def fingerprint(self) -> str:
        return self.header["fingerprint"]

    @property
    def backbone(self) -> str:
        return self.header.get("backbone", self.fingerprint[:12])

    @property
    def complete(self) -> bool:
        return len(self.rounds) >= int(self.header["n_rounds"])

    def labeled_ids(self, before_round: int | None = None) -> list[str]:
        """The labelled set the model of round `before_round` (default: the next one) was trained on."""
        rounds = self.rounds if before_round is None else self.rounds[:before_round]
        return list(self.header["seed_ids"]) + [i for r in rounds for i in r["acquired"]["ids"]]

    def acquired(self) -> list[tuple[int, str, float]]:
        """(round, id, score) of every acquisition, in order."""
        return [(r["round"], i, s) for r in self.rounds for i, s in zip(r["acquired"]["ids"], r["acquired"]["scores"])]

    def curve(self, split: str, path: str | Sequence[str] = "accuracy") -> tuple[np.ndarray, np.ndarray]:
        """(n_labeled, value) over the rounds that evaluated `split`; `path` walks the metrics dict,
        e.g. "accuracy", ("worst_group", "accuracy") or ("groups", "label*place", "waterbird*land", "accuracy")."""
        keys = [path] if isinstance(path, str) else list(path)
        xs, ys = [], []
        for r in self.rounds:
            value = r.get("metrics", {}).get(split)
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                xs.append(r["n_labeled"])
                ys.append(float(value))
        return np.asarray(xs, dtype=np.int64), np.asarray(ys, dtype=np.float64)


@dataclasses.dataclass
class _Scan:
    """A record's lines read up to the first one that is not what a record holds."""

    header: dict | None
    rounds: list[dict]
    end: int  # bytes of the header and intact rounds: what a writer keeps
    broken_line: int | None = None  # 1-based number of the first bad line
    problem: str = ""


def _missing(record: dict, fields: dict[str, type]) -> str:
    wrong = [k for k, kind in fields.items()
             if not isinstance(record.get(k), kind) or (kind is int and isinstance(record.get(k), bool))]
    return f"missing or mistyped field(s) {', '.join(wrong)}" if wrong else ""


def _line_problem(path: Path, line: bytes, header: dict | None, rounds: list[dict]) -> tuple[dict | None, str]:
    """The line parsed, and what is wrong with it as the next line of the record ("" when nothing)."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"not JSON ({e})"
    if not isinstance(record, dict):
        return None, f"a JSON {_JSON_KINDS.get(type(record), 'value')}, not an object"
    if header is None:
        if record.get("type") != "header":
            return record, "not a run header"
        if record.get("schema") != RECORD_SCHEMA:
            raise RecordError(f"{path}: record schema {record.get('schema')!r}, this embedcache reads {RECORD_SCHEMA}")
        return record, _missing(record, _HEADER_FIELDS)
    if record.get("type") != "round":
        return record, f"unknown record type {record.get('type')!r}"
    problem = _missing(record, _ROUND_FIELDS)
    if not problem and record["round"] != len(rounds):
        problem = f"round {record['round']} follows round {len(rounds) - 1}"
    if not problem and record["round"] >= header["n_rounds"]:
        problem = f"round {record['round']} is beyond the {header['n_rounds']} rounds planned"
    return record, problem


def _scan(path: Path) -> _Scan:
    """Header and rounds up to the first bad line. Bytes after the last newline are a line cut off
    by a kill: ignored here, truncated by the writer that resumes."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecordError(f"{path}: cannot read this run record ({e.strerror or e})") from None
    scan = _Scan(None, [], 0)
    for number, line in enumerate(data[:data.rfind(b"\n") + 1].splitlines(keepends=True), start=1):
        if line.strip():
            record, problem = _line_problem(path, line, scan.header, scan.rounds)
            if problem:
                scan.broken_line, scan.problem = number, problem
                return scan
            if scan.header is None:
                scan.header = record
            else:
                scan.rounds.append(record)
        scan.end += len(line)
    return scan


def rounds_text(n: int) -> str:
    """"no rounds", "round 0", "rounds 0-4": the first n rounds in words."""
    return "no rounds" if n == 0 else "round 0" if n == 1 else f"rounds 0-{n - 1}"


def _parse(path: Path) -> tuple[dict | None, list[dict], int]:
    """Header (None when not even the header line was finished), complete rounds, and the byte
    length of the whole lines; a bad line is an error that says how to recover."""
    scan = _scan(path)
    if scan.broken_line is not None:
        if scan.header is None:
            recovery = "the header is lost, so the run starts again from round 0"
        else:
            recovery = (f"the header and {rounds_text(len(scan.rounds))} before it are intact, and the run resumes at "
                        f"round {len(scan.rounds)}")
        raise RecordError(f"{path}, line {scan.broken_line}: {scan.problem}. Recover with `embedcache repair {path}`: "
                          f"it keeps the lines before this one and saves the original beside it; {recovery}")
    return scan.header, scan.rounds, scan.end


def read_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such run record")
    header, rounds, _ = _parse(path)
    if header is None:
        raise RecordError(f"{path}: holds no complete header (its run was killed as it started); rerun the "
                          "same `embedcache al` command, or remove the file")
    return Run(path, header, rounds)


def read_existing(path: str | Path) -> Run | None:
    """The record at `path` as it stands, or None when there is none yet (no file, or a run killed
    before its header line was finished, which its next writer starts over)."""
    path = Path(path)
    if not path.exists():
        return None
    header, rounds, _ = _parse(path)
    return None if header is None else Run(path, header, rounds)


def read_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Runs from record files and folders of them (`*.jsonl`, sorted); an empty selection is an error."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise RecordError(f"{p}: no run records (*.jsonl) in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise RecordError(f"{p}: no such run record or folder")
    if not files:
        raise RecordError("no run records given")
    return [read_run(f) for f in files]


def check_identity(path: Path, existing: dict, header: dict) -> None:
    """Refuse to continue a record made with another configuration, naming the fields that differ."""
    header = {"schema": RECORD_SCHEMA, **header}
    diff = [f for f in IDENTITY_FIELDS if canonical_json(existing.get(f)) != canonical_json(header.get(f))]
    if diff:
        raise RecordError(f"{path} belongs to another run configuration (differs in: {', '.join(diff)}); write to "
                          "another --out folder or remove it")


class RecordLock:
    """The exclusive lock of one record: `flock` on `<record>.lock`, a file that names its holder.

    `acquire` refuses at once when another process holds it. The OS releases the lock when the
    holder exits or is killed (or when an unreleased lock object is garbage-collected); `release`
    also removes the file, and `acquire` re-checks that the file it locked is still the one on
    disk, so a lock taken just as its previous holder removed the file is taken again.
    """

    def __init__(self, record: str | Path):
        self.record = Path(record)
        self.path = self.record.with_name(self.record.name + ".lock")
        self._file: BinaryIO | None = None

    def acquire(self) -> "RecordLock":
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            while True:
                file = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), "r+b", buffering=0)
                try:
                    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = file.read(512).decode("utf-8", "replace").strip() or "another process"
                    file.close()
                    raise RecordLockedError(f"{self.record} is being written by {holder}; wait for that run to "
                                            "finish or stop it, then rerun") from None
                except OSError:
                    file.close()
                    raise
                if self._still_on_disk(file):
                    break
                file.close()
            since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            file.truncate(0)
            file.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode())
        except OSError as e:  # a read-only folder, or one whose file system has no locks
            raise unwritable(folder, e) from None
        self._file = file
        return self

    def _still_on_disk(self, file: BinaryIO) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._file is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self._file.close()
        self._file = None

    def __enter__(self) -> "RecordLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunWriter:
    """Appends round lines to a record it holds the lock of; reopens an existing record of the same
    configuration. Use it as a context manager (or call `close`) to release the lock.

    `rounds` holds the complete rounds already on disk (empty for a new record). A record made
    with another configuration is never overwritten: that is an error naming the differences. The
    header is written when the writer opens a record that has none.
    """

    def __init__(self, path: str | Path, header: dict):
        self.path = Path(path)
        header = {"type": "header", "schema": RECORD_SCHEMA, **header}
        self.rounds: list[dict] = []
        self._lock = RecordLock(self.path).acquire()
        try:
            existing, self.rounds, end = _parse(self.path) if self.path.exists() else (None, [], 0)
            if existing is not None:
                check_identity(self.path, existing, header)
            self.header = existing or header
            if self.path.exists():
                with open(self.path, "r+b") as f:
                    f.truncate(end)
            if existing is None:
                self._append(header)
        except OSError as e:
            self.close()
            raise unwritable(self.path.parent, e) from None
        except BaseException:
            self.close()
            raise

    @property
    def complete(self) -> bool:
        return len(self.rounds) >= int(self.header["n_rounds"])

    def write_round(self, record: dict) -> None:
        record = {"type": "round", **record}
        if record["round"] != len(self.rounds):
            raise ConfigError(f"{self.path}: writing round {record['round']} after {len(self.rounds)} rounds")
        self._append(record)
        self.rounds.append(record)

    def _append(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), default=_json_default) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass
class Repair:
    """What `repair_run` found and did: `backup` is where the original now is (None: the record was
    intact and left alone); `header_kept` is False when the header itself was broken, and the
    record was moved there whole."""

    path: Path
    rounds_kept: int
    lines_dropped: int = 0
    backup: Path | None = None
    header_kept: bool = True
    problem: str = ""


def repair_run(path: str | Path) -> Repair:
    """Cut a record back to its header and the intact rounds before its first bad line, so its run
    resumes there. The original is saved beside it first (`<record>.broken`, or `.broken.N`), so
    nothing is lost; a record whose header is broken is moved there whole (the run starts over).
    Refused while another process writes the record; an intact record is left as it is."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such run record")
    with RecordLock(path):
        scan = _scan(path)
        if scan.broken_line is None:
            return Repair(path, len(scan.rounds))
        data = path.read_bytes()
        whole_lines = data[:data.rfind(b"\n") + 1].count(b"\n")
        backup = _save_beside(path, data)
        if scan.header is None:
            path.unlink()
        else:
            fresh = path.with_name(path.name + ".repairing")
            with open(fresh, "wb") as f:
                f.write(data[:scan.end])
                f.flush()
                os.fsync(f.fileno())
            os.replace(fresh, path)
        return Repair(path, len(scan.rounds), whole_lines - scan.broken_line + 1, backup, scan.header is not None,
                      f"line {scan.broken_line}: {scan.problem}")


def _save_beside(path: Path, data: bytes) -> Path:
    """Write `data` to the first free `<path>.broken[.N]` (never replacing a file) and sync it."""
    for n in itertools.count():
        backup = path.with_name(path.name + ".broken" + (f".{n}" if n else ""))
        try:
            with open(backup, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return backup
        except FileExistsError:
            continue


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
