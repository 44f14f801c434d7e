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
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from embedcache.errors import ConfigError, EmbedcacheError
from embedcache.recipe import canonical_json

RECORD_SCHEMA = 1
#: Header fields that define a run: a record is resumed only if all of them are equal.
IDENTITY_FIELDS = ("schema", "mode", "strategy", "seed", "protocol", "learner", "fingerprint", "data", "n_rounds")


class RecordError(EmbedcacheError):
    """A run record is malformed, or belongs to another configuration."""


def record_path(out_dir: str | Path, strategy: str, seed: int) -> Path:
    return Path(out_dir) / f"{strategy}-seed{seed}.jsonl"


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


def _parse(path: Path) -> tuple[dict | None, list[dict], int]:
    """Header, complete round lines, and the byte length of the whole lines (a partial tail excluded)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes after the last newline are a line cut off by a kill
    header, rounds = None, []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}, line {number}: not JSON ({e})") from None
        kind = record.get("type")
        if number == 1:
            if kind != "header":
                raise RecordError(f"{path}: line 1 is not a run header")
            if record.get("schema") != RECORD_SCHEMA:
                raise RecordError(f"{path}: record schema {record.get('schema')!r}, this embedcache reads {RECORD_SCHEMA}")
            header = record
        elif kind == "round":
            if record["round"] != len(rounds):
                raise RecordError(f"{path}, line {number}: round {record['round']} follows round {len(rounds) - 1}")
            rounds.append(record)
        else:
            raise RecordError(f"{path}, line {number}: unknown record type {kind!r}")
    return header, rounds, end


def read_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such run record")
    header, rounds, _ = _parse(path)
    if header is None:
        raise RecordError(f"{path}: empty run record")
    return Run(path, header, rounds)


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


class RunWriter:
    """Appends round lines to a record; reopens an existing record of the same configuration.

    `rounds` holds the complete rounds already on disk (empty for a new record). A record made
    with another configuration is never overwritten: that is an error naming the differences.
    """

    def __init__(self, path: str | Path, header: dict):
        self.path = Path(path)
        header = {"type": "header", "schema": RECORD_SCHEMA, **header}
        self.rounds: list[dict] = []
        if self.path.exists():
            existing, self.rounds, end = _parse(self.path)
            if existing is None:
                raise RecordError(f"{self.path}: exists but holds no header; remove it to start this run")
            diff = [f for f in IDENTITY_FIELDS if canonical_json(existing.get(f)) != canonical_json(header.get(f))]
            if diff:
                raise RecordError(f"{self.path} belongs to another run configuration (differs in: "
                                  f"{', '.join(diff)}); write to another --out folder or remove it")
            self.header = existing
            with open(self.path, "r+b") as f:
                f.truncate(end)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.header = header
            self._append(header)

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


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
