"""The labels file: one CSV row per labelling action, appended and fsynced under an OS file lock.

Format (UTF-8, a header line first; the columns a file has, at least `id` and `label`):

    id,label,annotator,time,note

* `label` is a class name. The state of an id is its **last** row: rows are only ever appended,
  never edited, so the whole history stays in the file.
* An empty `label` takes the id's label away from that row on: an undo appends such a row with
  note `undo`. An empty label with note `skip` marks the id as skipped: it is not suggested again
  until an undo (another empty row) brings it back.
* `time` is UTC ISO 8601; `annotator` and `note` are free text.

Every write takes an exclusive `fcntl.flock` on the file, re-reads what other processes appended,
checks the action against that state (an id is never labelled twice without an undo between),
appends one complete row in one `write` and fsyncs before returning, so two processes or two
browser tabs never interleave lines or duplicate a label, and a label reported as written survives
`kill -9` or a power cut. Reading takes a shared lock. A row cut short by a crash (the file ends
without a line end) is ignored by readers, which say where; the next writer moves those bytes to
`<file>.torn` before appending, so the CSV stays clean and nothing is thrown away.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import fcntl
import io
import os
from pathlib import Path
from typing import Iterator

from embedcache.errors import EmbedcacheError
from embedcache.faults import crash_point

COLUMNS = ("id", "label", "annotator", "time", "note")
REQUIRED = ("id", "label")
SKIP, UNDO = "skip", "undo"


class LabelsError(EmbedcacheError):
    """A labels file cannot be read or written as asked."""


class LabelConflict(LabelsError):
    """The action contradicts the file's current state (e.g. labelling an id that already has a label)."""

    def __init__(self, message: str, current: "LabelRow | None"):
        super().__init__(message)
        self.current = current


@dataclasses.dataclass(frozen=True)
class LabelRow:
    """One row of the file. `label` is None for an empty label (an undo or a skip); `line` is 1-based."""

    id: str
    label: str | None
    annotator: str = ""
    time: str = ""
    note: str = ""
    line: int = 0

    @property
    def action(self) -> str:
        """"label", "skip" or "retract"."""
        if self.label is not None:
            return "label"
        return "skip" if self.note == SKIP else "retract"


@dataclasses.dataclass
class LabelState:
    """Everything a labels file says: every row in order, each id's last row, the class names seen."""

    source: str
    rows: list[LabelRow] = dataclasses.field(default_factory=list)
    current: dict[str, LabelRow] = dataclasses.field(default_factory=dict)
    classes_seen: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def add(self, row: LabelRow) -> None:
        self.rows.append(row)
        self.current.pop(row.id, None)  # re-insert: `current` is ordered by each id's last action
        self.current[row.id] = row
        if row.label is not None and row.label not in self.classes_seen:
            self.classes_seen.append(row.label)

    def labels(self) -> list[LabelRow]:
        """The ids that have a label now, each with its labelling row, in the order they were labelled."""
        return [row for row in self.current.values() if row.action == "label"]

    def skipped(self) -> set[str]:
        return {i for i, row in self.current.items() if row.action == "skip"}

    def label_of(self, example_id: str) -> str | None:
        row = self.current.get(example_id)
        return None if row is None else row.label

    def last_action(self, annotator: str) -> LabelRow | None:
        """`annotator`'s latest label or skip that is still in force: what an undo takes back."""
        for row in reversed(self.rows):
            if row.annotator == annotator and row.action != "retract" and self.current.get(row.id) is row:
                return row
        return None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _clean(value: str, what: str, where: str) -> str:
    text = str(value).strip()
    if "\n" in text or "\r" in text:
        raise LabelsError(f"{where}: {what} {text!r} contains a line break")
    return text


def _complete_records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(end offset, record bytes) of each complete CSV record in `data`: it ends with a line end that
    lies outside quotes (an even number of quote characters so far). UTF-8 never puts the bytes of
    '"' or '\\n' inside another character, so this is safe on bytes."""
    start = 0
    while True:
        end = data.find(b"\n", start)
        while end >= 0 and data.count(b'"', start, end) % 2:
            end = data.find(b"\n", end + 1)
        if end < 0:
            return
        yield end + 1, data[start:end + 1]
        start = end + 1


class LabelsFile:
    """A labels CSV opened for reading and appending (created, with its header, on first write)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix.lower() == ".json":
            raise LabelsError(f"{self.path}: labels are appended to a CSV file; a Label Studio export (.json) "
                              "can be read by suggest, predict and export-label-studio, not written to")
        if self.path.exists() and not self.path.is_file():
            raise LabelsError(f"{self.path}: not a file")
        self.state = LabelState(str(self.path))
        self._columns: tuple[str, ...] | None = None
        self._offset = 0  # bytes read and parsed: every complete record before it
        self._lines = 0  # lines before `_offset`
        self._torn: tuple[int, bytes] | None = None  # (line, bytes) of an incomplete last record

    # ------------------------------------------------------------------ reading
    @contextlib.contextmanager
    def _locked(self, mode: int, create: bool = False) -> Iterator[int | None]:
        flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileNotFoundError:
            yield None
            return
        except OSError as e:
            raise LabelsError(f"{self.path}: cannot open ({e.strerror})") from None
        try:
            fcntl.flock(fd, mode)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def read(self) -> LabelState:
        """Bring the state up to date with everything appended so far (by any process) and return it."""
        with self._locked(fcntl.LOCK_SH) as fd:
            if fd is not None:
                self._read_new(fd)
        return self.state

    def _read_new(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size < self._offset:
            raise LabelsError(f"{self.path} got shorter while open (was {self._offset} bytes, now {size}); "
                              "labels files are only appended to")
        data = os.pread(fd, size - self._offset, self._offset)
        consumed = 0
        for end, record in _complete_records(data):
            self._parse(record)
            consumed = end
            self._lines += record.count(b"\n")
        self._offset += consumed
        tail = data[consumed:]
        self._torn = (self._lines + 1, tail) if tail else None
        self.state.warnings = [] if not tail else [
            f"{self.path}, line {self._lines + 1}: an incomplete last row (a write cut short by a crash?) is "
            f"ignored: {tail[:80].decode('utf-8', 'replace')!r}; the next label written moves it to "
            f"{self.path.name}.torn"]

    def _parse(self, record: bytes) -> None:
        line = self._lines + 1
        where = f"{self.path}, line {line}"
        try:
            text = record.decode("utf-8")
        except UnicodeDecodeError:
            raise LabelsError(f"{where}: not UTF-8 text") from None
        if self._columns is None:
            text = text.removeprefix("\ufeff")  # a byte-order mark, as spreadsheet programs write
        cells = next(csv.reader(io.StringIO(text)), [])
        if self._columns is None:
            columns = tuple(c.strip() for c in cells)
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise LabelsError(f"{self.path}: the header {list(columns)} lacks {missing}; a labels file starts "
                                  f"with the line {','.join(COLUMNS)}")
            self._columns = columns
            return
        if not cells:
            return
        if len(cells) != len(self._columns):
            raise LabelsError(f"{where}: {len(cells)} fields, the header has {len(self._columns)} "
                              f"({','.join(self._columns)})")
        values = dict(zip(self._columns, cells))
        example_id = values["id"]
        if not example_id:
            raise LabelsError(f"{where}: empty id")
        label = values["label"].strip()
        self.state.add(LabelRow(id=example_id, label=label or None, annotator=values.get("annotator", ""),
                                time=values.get("time", ""), note=values.get("note", "").strip(), line=line))

    # ------------------------------------------------------------------ writing
    def label(self, example_id: str, label: str, annotator: str = "", note: str = "") -> LabelRow:
        """Append a label; LabelConflict if the id has one already (an undo must come first)."""
        label = _clean(label, "label", str(self.path))
        if not label:
            raise LabelsError(f"{self.path}: an empty label for id {example_id!r}; use an undo to take a label away")

        def check(state: LabelState) -> None:
            current = state.current.get(example_id)
            if current is not None and current.action == "label":
                raise LabelConflict(f"id {example_id!r} is already labelled {current.label!r} "
                                    f"(line {current.line}, by {current.annotator or 'someone'})", current)
        return self._append(example_id, label, annotator, note, check)

    def skip(self, example_id: str, annotator: str = "") -> LabelRow:
        """Append a skip; LabelConflict if the id is labelled or skipped already."""
        def check(state: LabelState) -> None:
            current = state.current.get(example_id)
            if current is not None and current.action != "retract":
                what = "skipped" if current.action == "skip" else "labelled"
                raise LabelConflict(f"id {example_id!r} is already {what} (line {current.line})", current)
        return self._append(example_id, "", annotator, SKIP, check)

    def retract(self, example_id: str, annotator: str = "") -> LabelRow:
        """Append an undo row for the id's label or skip; LabelConflict if it has neither."""
        def check(state: LabelState) -> None:
            current = state.current.get(example_id)
            if current is None or current.action == "retract":
                raise LabelConflict(f"id {example_id!r} has no label or skip to undo", current)
        return self._append(example_id, "", annotator, UNDO, check)

    def undo_last(self, annotator: str) -> LabelRow:
        """Take back `annotator`'s latest label or skip still in force; returns the row taken back."""
        taken: list[LabelRow] = []

        def check(state: LabelState) -> None:
            row = state.last_action(annotator)
            if row is None:
                raise LabelConflict(f"{self.path}: nothing of {annotator or 'this annotator'}'s to undo", None)
            taken.append(row)
        self._append(None, "", annotator, UNDO, check)
        return taken[0]

    def _append(self, example_id: str | None, label: str, annotator: str, note: str, check) -> LabelRow:
        annotator = _clean(annotator, "annotator", str(self.path))
        note = _clean(note, "note", str(self.path))
        with self._locked(fcntl.LOCK_EX, create=True) as fd:
            self._read_new(fd)
            check(self.state)
            if example_id is None:  # undo_last: the id is decided under the lock
                example_id = self.state.last_action(annotator).id
            if "\n" in example_id or "\r" in example_id:
                raise LabelsError(f"{self.path}: id {example_id!r} contains a line break")
            if self._torn is not None:
                self._set_torn_aside(fd)
            if self._columns is None:
                self._columns = COLUMNS
                self._write(fd, self._encode(COLUMNS))
                self._offset, self._lines = os.fstat(fd).st_size, 1
                self._sync_folder()
            row = LabelRow(id=example_id, label=label or None, annotator=annotator, time=now(), note=note,
                           line=self._lines + 1)
            values = {"id": row.id, "label": label, "annotator": annotator, "time": row.time, "note": note}
            data = self._encode([values.get(c, "") for c in self._columns])
            self._write(fd, data)
            crash_point("labels.written")
            os.fsync(fd)
            crash_point("labels.synced")
            self._offset += len(data)
            self._lines += 1
            self.state.add(row)
        return row

    @staticmethod
    def _encode(cells) -> bytes:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow(cells)
        return out.getvalue().encode("utf-8")

    @staticmethod
    def _write(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def _set_torn_aside(self, fd: int) -> None:
        """Move the incomplete last record to `<file>.torn` (synced first), then cut it off the CSV."""
        line, tail = self._torn
        aside = self.path.with_name(self.path.name + ".torn")
        with open(aside, "ab") as f:
            f.write(f"# {now()}: line {line} of {self.path.name}, {len(tail)} bytes:\n".encode() + tail + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.ftruncate(fd, self._offset)
        os.fsync(fd)
        self._torn = None
        self.state.warnings = []

    def _sync_folder(self) -> None:
        """fsync the folder so a newly created file's name survives a power cut too."""
        fd = os.open(self.path.parent if str(self.path.parent) else ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_labels(path: str | Path, id_field: str = "embedcache_id") -> LabelState:
    """The state of a labels file: our CSV, or a Label Studio JSON export (choices) when it ends in .json."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: no such labels file")
    if path.suffix.lower() == ".json":
        from embedcache.workflow.label_studio import read_export

        return read_export(path, id_field)
    return LabelsFile(path).read()
