"""Run records: one JSONL file per (strategy, seed) run; everything the analysis reads. This module
is the only one that knows how a record is laid out: the rest of embedcache builds and reads the
typed records below (`RunHeader`, `RoundRecord` and their parts) and never walks their JSON.

Line 1 is the header (`"type": "header"`, `RunHeader`): its `schema_version`, strategy (the canonical
spec, `probcover:delta=0.3`: its options are part of the run's identity; `strategy_options` lists
every option's value, defaults included, for strategies that have options), seed, mode,
the resolved protocol, the learner config, the features `fingerprint` (cache recipe in linear mode,
backbone recipe in finetune mode), the `data` fingerprint (which examples: `Metadata.fingerprint`),
a human `backbone` label, `source` (the cache file, the dataset description, a hybrid's linear
side), library versions, the number of rounds planned (`n_rounds`), the seed set (`seed_ids` and
their group values in `seed_groups`), and the pool's group counts (`pool_counts`: column → value →
count over the pool split, the base rate the upsampling analysis compares acquisitions with).

Then one line per round (`"type": "round"`, `RoundRecord`): `round`, `n_labeled` (examples the
round's model was trained on), `metrics` (split → `SplitMetrics`, see `embedcache.metrics.evaluate`),
`training` (`Training`: `steps`, `loss_initial`, `loss_final`, `stopped_by`), `acquired`
(`Acquisition`: `ids`, `scores`, and `groups`: column → value per acquired id; the batch this
round's model chose, labelled from the next round on; empty in the last round), `pool_size`
(candidates scored), `seconds` (wall time of the round's training and acquisition: fitting,
including any validation a learner's stop rule does, plus scoring the pool and choosing the batch;
the protocol's evaluation of the round's model and the stopping measures are left out, since an AL
round in use has neither), and `stopping` (`embedcache.stopping.Measures` of the round's model on
the run's stop set: `kappa` and `changed` against the previous round, None in round 0;
`uncertainty` and `max_uncertainty`; what the stopping signals read).

Schema versions. 2 (written now): the header names its version `schema_version`, and `source`
holds only what the header does not say already. 1 (embedcache before typed records): the key is
`schema`, and `source` repeats `fingerprint`, `backbone` and `data`. Rounds are the same in both,
so a version-1 record is read, reported and resumed as it is (its resumed rounds follow its header).
Fields added since, all optional: the protocol's `stop_set_size` and the rounds' `stopping`. A record
without them was made before stopping signals were recorded: its rounds are read with `stopping`
None, its header matches a protocol of any stop set size, and its resumed rounds record no signals.

Lines are appended and flushed one at a time, so a killed run leaves whole lines plus at most one
partial last line, which readers ignore and writers truncate before resuming. (No fsync: a flushed
line survives the process being killed; only a power cut can lose the last rounds, which then
rerun. fsync would cost more than a whole linear-mode round.)

One writer at a time: a writer holds an OS lock (`flock`) on `<record>.lock`, which names it (pid,
host, since when). The OS drops the lock when its process dies, however it dies, so a rerun after
a kill is never blocked; readers never lock. A line that is not what a record holds (not JSON, not
an object, a field missing or of the wrong type, a round out of order) stops readers with a message
naming the file and line; `repair_run` keeps the header and the intact rounds before it, and the
original beside it.
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
from typing import Any, BinaryIO, Iterable, Mapping

import numpy as np

from embedcache.errors import ConfigError, EmbedcacheError
from embedcache.recipe import canonical_json
from embedcache.stopping import Measures

#: The version new records are written in; READABLE_SCHEMAS lists those this embedcache reads.
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
#: Header fields that define a run: a record is resumed or reused only if all of them are equal. The
#: schema version is not one of them: it says how the record is written, not what run it holds.
IDENTITY_FIELDS = ("mode", "strategy", "seed", "protocol", "learner", "fingerprint", "data", "n_rounds")
#: Protocol fields added after records were first written: a header without one matches any value of it.
_LATER_PROTOCOL_FIELDS = ("stop_set_size",)
#: Fields every header and every round line must have, with their JSON types.
_HEADER_FIELDS = {"strategy": str, "seed": int, "n_rounds": int, "fingerprint": str, "seed_ids": list}
_ROUND_FIELDS = {"round": int, "n_labeled": int, "metrics": dict, "acquired": dict}
_JSON_KINDS = {list: "array", int: "number", float: "number", str: "string", bool: "boolean", type(None): "null",
               dict: "object"}
#: Joins column names in a group spec and value names in a combined group value (as `embedcache.metrics`).
_COMBINE = "*"


class RecordError(EmbedcacheError):
    """A run record is malformed, or belongs to another configuration."""


class RecordLockedError(EmbedcacheError):
    """Another live process is writing this run record."""


def record_path(out_dir: str | Path, strategy: str, seed: int) -> Path:
    """`<strategy>-seed<seed>.jsonl`; a strategy with options (`probcover:delta=0.3`) is written
    `probcover+delta=0.3`, a name every file system takes."""
    return Path(out_dir) / f"{strategy.replace(':', '+')}-seed{seed}.jsonl"


def unwritable(folder: Path, error: OSError) -> ConfigError:
    """The one-line error for an output folder the OS refuses to write in (or to create)."""
    what = f"{error.strerror or error}" + (f": {error.filename}" if error.filename not in (None, str(folder)) else "")
    return ConfigError(f"cannot write run records in {folder} ({what}): make the folder writable, or choose "
                       "another one", param="out")


# ---------------------------------------------------------------------------------------------- typed records

class _Malformed(ValueError):
    """A field of a record line that is missing or of the wrong JSON type; the message names it."""


_NUMBER = (int, float)


def _field(d: Mapping, key: str, kind: type | tuple[type, ...], where: str = "", default: Any = ...) -> Any:
    """d[key], checked to be of `kind` (bool is not a number); `default` when missing, if given."""
    name = f"{where}.{key}" if where else key
    if key not in d:
        if default is ...:
            raise _Malformed(f"no field {name}")
        return default
    value = d[key]
    if isinstance(value, np.generic):  # a learner's facts may be numpy scalars
        value = value.item()
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(dict.fromkeys(_JSON_KINDS.get(k, k.__name__) for k in kinds))
        raise _Malformed(f"field {name} is a JSON {_JSON_KINDS.get(type(value), 'value')}, not {expected}")
    return value


def _object(value: Any, name: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise _Malformed(f"field {name} is not an object")
    return value


def _strings(values: Any, name: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _Malformed(f"field {name} is not an array of strings")
    return values


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclasses.dataclass(frozen=True)
class GroupAccuracy:
    """Accuracy on the `n` evaluated examples with one group value."""

    n: int
    accuracy: float


@dataclasses.dataclass(frozen=True)
class WorstGroup:
    """The value of the group spec `group` (e.g. "label*place") with the lowest accuracy."""

    group: str
    value: str
    accuracy: float


@dataclasses.dataclass(frozen=True)
class SplitMetrics:
    """What one round measured on one evaluated split (`embedcache.metrics.evaluate`).

    groups: spec → value → accuracy there; worst_group: the protocol's worst-group spec, if it has
    one; extra: the dataset's own metrics by name ("macro_f1", "class_balanced_accuracy",
    "user_accuracy_p10", ...).

    Metrics are named as the analysis names them (`value`): "accuracy", "worst_group", an extra's
    name, or "SPEC=VALUE" for one group value, e.g. "label*place=waterbird*land".
    """

    n: int
    accuracy: float
    groups: dict[str, dict[str, GroupAccuracy]] = dataclasses.field(default_factory=dict)
    worst_group: WorstGroup | None = None
    extra: dict[str, float] = dataclasses.field(default_factory=dict)

    def value(self, metric: str) -> float | None:
        """The metric named `metric` (see the class docstring); None when this split lacks it."""
        if metric == "accuracy":
            return self.accuracy
        if metric == "worst_group":
            return None if self.worst_group is None else self.worst_group.accuracy
        spec, sep, value = metric.partition("=")
        if sep:
            group = self.groups.get(spec, {}).get(value)
            return None if group is None else group.accuracy
        return self.extra.get(metric)

    def scalar_names(self) -> list[str]:
        """The metrics with one value per split: accuracy, worst_group when recorded, the extras."""
        return ["accuracy", *(["worst_group"] if self.worst_group else []), *self.extra]

    def group_names(self) -> list[str]:
        """"SPEC=VALUE" for every group value recorded, in evaluation order."""
        return [f"{spec}={value}" for spec, values in self.groups.items() for value in values]

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "SplitMetrics":
        d = _object(d, where)
        groups: dict[str, dict[str, GroupAccuracy]] = {}
        for spec, values in _field(d, "groups", dict, where, {}).items():
            groups[spec] = {}
            for value, g in _object(values, f"{where}.groups.{spec}").items():
                name = f"{where}.groups.{spec}.{value}"
                g = _object(g, name)
                groups[spec][value] = GroupAccuracy(_field(g, "n", int, name),
                                                    float(_field(g, "accuracy", _NUMBER, name)))
        worst = _field(d, "worst_group", dict, where, None)
        if worst is not None:
            name = f"{where}.worst_group"
            worst = WorstGroup(_field(worst, "group", str, name), _field(worst, "value", str, name),
                               float(_field(worst, "accuracy", _NUMBER, name)))
        extra = {k: float(_field(d, k, _NUMBER, where)) for k in d
                 if k not in ("n", "accuracy", "groups", "worst_group")}
        return cls(_field(d, "n", int, where), float(_field(d, "accuracy", _NUMBER, where)), groups, worst, extra)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"n": self.n, "accuracy": self.accuracy}
        if self.groups:
            d["groups"] = {spec: {value: dataclasses.asdict(g) for value, g in values.items()}
                           for spec, values in self.groups.items()}
        if self.worst_group is not None:
            d["worst_group"] = dataclasses.asdict(self.worst_group)
        return {**d, **self.extra}


@dataclasses.dataclass(frozen=True)
class Training:
    """What fitting a round's model took, as its learner reports it (`training_`): steps, the first
    and last loss, and the rule that stopped it (e.g. "converged", "loss_ratio", "schedule");
    `scorer` is a hybrid learner's second model's own; `extra` keeps any other fact a learner
    reports. Every field is None for a learner that reports nothing."""

    steps: int | None = None
    loss_initial: float | None = None
    loss_final: float | None = None
    stopped_by: str | None = None
    scorer: "Training | None" = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "training") -> "Training":
        d = _object(d, where)
        scorer = _field(d, "scorer", dict, where, None)
        known = ("steps", "loss_initial", "loss_final", "stopped_by", "scorer")
        return cls(_field(d, "steps", (int, type(None)), where, None),
                   _float_or_none(_field(d, "loss_initial", (*_NUMBER, type(None)), where, None)),
                   _float_or_none(_field(d, "loss_final", (*_NUMBER, type(None)), where, None)),
                   _field(d, "stopped_by", (str, type(None)), where, None),
                   None if scorer is None else cls.from_dict(scorer, f"{where}.scorer"),
                   {k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("steps", "loss_initial", "loss_final", "stopped_by")
             if getattr(self, k) is not None}
        d.update(self.extra)
        if self.scorer is not None:
            d["scorer"] = self.scorer.to_dict()
        return d


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """The batch a round's model chose, best first: ids, their scores, and each one's value of every
    recorded column (`groups`: column → values, aligned with `ids`). Empty in the last round."""

    ids: list[str] = dataclasses.field(default_factory=list)
    scores: list[float] = dataclasses.field(default_factory=list)
    groups: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def values(self, spec: str) -> list[str]:
        """Each acquired example's value of a group spec: a column, or columns joined with "*"
        (values joined the same way, e.g. "waterbird*land")."""
        columns = [self.groups[c] for c in spec.split(_COMBINE)]
        return [_COMBINE.join(v) for v in zip(*columns)]

    @classmethod
    def from_dict(cls, d: Any, where: str = "acquired") -> "Acquisition":
        d = _object(d, where)
        ids = _strings(_field(d, "ids", list, where), f"{where}.ids")
        scores = _field(d, "scores", list, where)
        if len(scores) != len(ids) or not all(isinstance(s, _NUMBER) and not isinstance(s, bool) for s in scores):
            raise _Malformed(f"field {where}.scores is not an array of {len(ids)} numbers")
        groups = {c: _strings(v, f"{where}.groups.{c}") for c, v in _field(d, "groups", dict, where, {}).items()}
        short = [c for c, v in groups.items() if len(v) != len(ids)]
        if short:
            raise _Malformed(f"field {where}.groups.{short[0]} does not hold one value per id")
        return cls(ids, [float(s) for s in scores], groups)

    def to_dict(self) -> dict:
        return {"ids": list(self.ids), "scores": list(self.scores), "groups": dict(self.groups)}


def _measures(d: Any, where: str = "stopping") -> Measures:
    """A round's stopping measures (see `embedcache.stopping.Measures`)."""
    d = _object(d, where)
    pairwise = (*_NUMBER, type(None))  # None in round 0: no previous round to compare with
    return Measures(_float_or_none(_field(d, "kappa", pairwise, where)),
                    _float_or_none(_field(d, "changed", pairwise, where)),
                    float(_field(d, "uncertainty", _NUMBER, where)), float(_field(d, "max_uncertainty", _NUMBER, where)))


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    """One round of a run: the model trained on `n_labeled` examples, what it measured per split
    (empty in rounds the protocol does not evaluate), how its training went, what it acquired, and
    its stopping measures (None: the run has no stop set, or its record predates them).
    `seconds`: training + acquisition wall time, without the protocol's evaluation (module docstring)."""

    round: int
    n_labeled: int
    metrics: dict[str, SplitMetrics] = dataclasses.field(default_factory=dict)
    training: Training = Training()
    acquired: Acquisition = Acquisition()
    pool_size: int = 0
    seconds: float = 0.0
    stopping: Measures | None = None

    @classmethod
    def from_dict(cls, d: Mapping) -> "RoundRecord":
        metrics = {split: SplitMetrics.from_dict(m, f"metrics.{split}") for split, m in d["metrics"].items()}
        stopping = _field(d, "stopping", dict, "", None)
        return cls(d["round"], d["n_labeled"], metrics, Training.from_dict(_field(d, "training", dict, "", {})),
                   Acquisition.from_dict(d["acquired"]), _field(d, "pool_size", int, "", 0),
                   float(_field(d, "seconds", _NUMBER, "", 0.0)), None if stopping is None else _measures(stopping))

    def to_dict(self) -> dict:
        d = {"type": "round", "round": self.round, "n_labeled": self.n_labeled,
             "metrics": {split: m.to_dict() for split, m in self.metrics.items()},
             "training": self.training.to_dict(), "acquired": self.acquired.to_dict(),
             "pool_size": self.pool_size, "seconds": self.seconds}
        return d if self.stopping is None else {**d, "stopping": dataclasses.asdict(self.stopping)}


@dataclasses.dataclass(frozen=True)
class Source:
    """The features a run used, and where they came from.

    fingerprint: the features' recipe fingerprint (the cache's in linear mode, the backbone starting
    point's in finetune mode); data: which examples (`Metadata.fingerprint`); backbone: a label for
    plots; cache: the cache file (linear mode); dataset: the cache's or the adapter's dataset
    description (name, root, options, rows, manifest_sha256); linear: a hybrid run's linear side
    (`cache`, `fingerprint`, `backbone`).
    """

    fingerprint: str
    data: str = ""
    backbone: str = ""
    cache: str | None = None
    dataset: dict[str, Any] | None = None
    linear: dict[str, Any] | None = None

    @property
    def dataset_options(self) -> dict[str, Any]:
        """The dataset adapter's options as recorded (e.g. a jsonl file's `splits`)."""
        options = (self.dataset or {}).get("options")
        return options if isinstance(options, dict) else {}

    @property
    def dataset_parameters(self) -> dict[str, Any]:
        """What made these examples, as recorded: a built dataset's build parameters (`build`, from
        its builder's build.json, e.g. a Waterbirds variant's `matched` share), then the adapter's
        options; single values only (numbers, strings, booleans)."""
        build = (self.dataset or {}).get("build")
        merged = {**(build if isinstance(build, dict) else {}), **self.dataset_options}
        return {k: v for k, v in merged.items() if isinstance(v, (int, float, str, bool))}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunHeader:
    """A run's first line: everything that defines it (`identity`) and what the analysis needs
    besides the rounds. `schema_version` is the version the record was read in (SCHEMA_VERSION for
    a new one); `created` is set when the record is written."""

    strategy: str
    seed: int
    n_rounds: int
    source: Source
    seed_ids: list[str]
    mode: str = "unknown"
    protocol: dict[str, Any] = dataclasses.field(default_factory=dict)
    learner: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed_groups: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    pool_counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    strategy_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    created: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def fingerprint(self) -> str:
        return self.source.fingerprint

    @property
    def data(self) -> str:
        return self.source.data

    @property
    def backbone(self) -> str:
        """A label for plots: the recorded one, else the fingerprint's first 12 characters."""
        return self.source.backbone or self.fingerprint[:12]

    @property
    def pool_split(self) -> str:
        return self.protocol.get("pool_split", "train")

    @property
    def stop_set_size(self) -> int:
        """Examples the run measures its stopping signals on (0 in records made before they were recorded)."""
        return int(self.protocol.get("stop_set_size", 0))

    @property
    def columns(self) -> list[str]:
        """Columns whose value is recorded for the seed set and every acquisition (the label and each group)."""
        return list(self.seed_groups)

    def identity(self) -> dict[str, Any]:
        """The fields that define the run (IDENTITY_FIELDS), as JSON values."""
        return {f: json.loads(canonical_json(getattr(self, f))) for f in IDENTITY_FIELDS}

    def differences(self, other: "RunHeader") -> list[str]:
        """The identity fields in which `other` is another run configuration (a protocol field added
        since one of the two was written is not compared)."""
        mine, theirs = self.identity(), other.identity()
        for field in _LATER_PROTOCOL_FIELDS:
            if field not in mine["protocol"] or field not in theirs["protocol"]:
                mine["protocol"].pop(field, None)
                theirs["protocol"].pop(field, None)
        return [f for f in IDENTITY_FIELDS if canonical_json(mine[f]) != canonical_json(theirs[f])]

    @classmethod
    def from_dict(cls, d: Mapping) -> "RunHeader":
        """A header line of any readable schema version (the caller has checked the version)."""
        source = _field(d, "source", dict, "", {})
        return cls(
            strategy=d["strategy"], seed=d["seed"], n_rounds=d["n_rounds"],
            seed_ids=_strings(d["seed_ids"], "seed_ids"),
            source=Source(d["fingerprint"], _field(d, "data", str, "", ""), _field(d, "backbone", str, "", ""),
                          _field(source, "cache", (str, type(None)), "source", None),
                          _field(source, "dataset", (dict, type(None)), "source", None),
                          _field(source, "linear", (dict, type(None)), "source", None)),
            mode=_field(d, "mode", str, "", "unknown"), protocol=_field(d, "protocol", dict, "", {}),
            learner=_field(d, "learner", dict, "", {}),
            seed_groups={c: _strings(v, f"seed_groups.{c}") for c, v in _field(d, "seed_groups", dict, "", {}).items()},
            pool_counts=_field(d, "pool_counts", dict, "", {}), versions=_field(d, "versions", dict, "", {}),
            strategy_options=_field(d, "strategy_options", dict, "", {}),
            created=_field(d, "created", (str, type(None)), "", None), schema_version=_schema_version(d))

    def to_dict(self) -> dict:
        """The header line in the current schema version."""
        source = {k: getattr(self.source, k) for k in ("cache", "dataset", "linear") if getattr(self.source, k)}
        d = {"type": "header", "schema_version": SCHEMA_VERSION, "mode": self.mode, "strategy": self.strategy,
             "seed": self.seed, "protocol": self.protocol, "learner": self.learner, "fingerprint": self.fingerprint,
             "data": self.data, "backbone": self.source.backbone, "source": source, "n_rounds": self.n_rounds,
             "seed_ids": self.seed_ids, "seed_groups": self.seed_groups, "pool_counts": self.pool_counts,
             "versions": self.versions}
        if self.strategy_options:
            d["strategy_options"] = self.strategy_options
        return d if self.created is None else {**d, "created": self.created}


def _schema_version(d: Mapping) -> int | None:
    """The header's schema version: `schema_version`, or version 1's `schema`; None when it has neither."""
    version = d.get("schema_version", d.get("schema"))
    return version if isinstance(version, int) and not isinstance(version, bool) else None


@dataclasses.dataclass
class Run:
    """One run record read back: its header and its complete rounds."""

    path: Path
    header: RunHeader
    rounds: list[RoundRecord]

    @property
    def strategy(self) -> str:
        return self.header.strategy

    @property
    def seed(self) -> int:
        return self.header.seed

    @property
    def fingerprint(self) -> str:
        return self.header.fingerprint

    @property
    def backbone(self) -> str:
        return self.header.backbone

    @property
    def complete(self) -> bool:
        return len(self.rounds) >= self.header.n_rounds

    def labeled_ids(self, before_round: int | None = None) -> list[str]:
        """The labelled set the model of round `before_round` (default: the next one) was trained on."""
        rounds = self.rounds if before_round is None else self.rounds[:before_round]
        return list(self.header.seed_ids) + [i for r in rounds for i in r.acquired.ids]

    def acquired(self) -> list[tuple[int, str, float]]:
        """(round, id, score) of every acquisition, in order."""
        return [(r.round, i, s) for r in self.rounds for i, s in zip(r.acquired.ids, r.acquired.scores)]

    def curve(self, split: str, metric: str = "accuracy") -> tuple[np.ndarray, np.ndarray]:
        """(n_labeled, value) over the rounds that evaluated `metric` on `split` (metric names as in
        `SplitMetrics.value`)."""
        xs, ys = [], []
        for r in self.rounds:
            metrics = r.metrics.get(split)
            value = None if metrics is None else metrics.value(metric)
            if value is not None:
                xs.append(r.n_labeled)
                ys.append(value)
        return np.asarray(xs, dtype=np.int64), np.asarray(ys, dtype=np.float64)


# ------------------------------------------------------------------------------------------- reading records

@dataclasses.dataclass
class _Scan:
    """A record's lines read up to the first one that is not what a record holds."""

    header: RunHeader | None
    rounds: list[RoundRecord]
    end: int  # bytes of the header and intact rounds: what a writer keeps
    broken_line: int | None = None  # 1-based number of the first bad line
    problem: str = ""


def _missing(record: dict, fields: dict[str, type]) -> str:
    wrong = [k for k, kind in fields.items()
             if not isinstance(record.get(k), kind) or (kind is int and isinstance(record.get(k), bool))]
    return f"missing or mistyped field(s) {', '.join(wrong)}" if wrong else ""


def _line_problem(path: Path, line: bytes, header: RunHeader | None,
                  rounds: list[RoundRecord]) -> tuple[RunHeader | RoundRecord | None, str]:
    """The line parsed, and what is wrong with it as the next line of the record ("" when nothing)."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"not JSON ({e})"
    if not isinstance(record, dict):
        return None, f"a JSON {_JSON_KINDS.get(type(record), 'value')}, not an object"
    if header is None:
        if record.get("type") != "header":
            return None, "not a run header"
        version = _schema_version(record)
        readable = " and ".join(map(str, READABLE_SCHEMAS))
        if version is None:
            raise RecordError(f"{path}: the header has no schema_version, so it is not a run record embedcache "
                              f"wrote (this embedcache reads schema versions {readable})")
        if version not in READABLE_SCHEMAS:
            raise RecordError(f"{path}: record schema version {version}, but this embedcache reads versions "
                              f"{readable}; a newer embedcache wrote it: upgrade to read it")
        problem = _missing(record, _HEADER_FIELDS)
        return _typed(RunHeader.from_dict, record, problem)
    if record.get("type") != "round":
        return None, f"unknown record type {record.get('type')!r}"
    problem = _missing(record, _ROUND_FIELDS)
    if not problem and record["round"] != len(rounds):
        problem = f"round {record['round']} follows round {len(rounds) - 1}"
    if not problem and record["round"] >= header.n_rounds:
        problem = f"round {record['round']} is beyond the {header.n_rounds} rounds planned"
    return _typed(RoundRecord.from_dict, record, problem)


def _typed(parse, record: dict, problem: str):
    """(parse(record), "") when the line has no problem yet and parses; else (None, the problem)."""
    if problem:
        return None, problem
    try:
        return parse(record), ""
    except _Malformed as e:
        return None, str(e)


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


def _parse(path: Path) -> tuple[RunHeader | None, list[RoundRecord], int]:
    """Header (None when not even the header line was finished), complete rounds, and the byte
    length of the whole lines; a bad line is an error that says how to recover."""
    scan = _scan(path)
    if scan.broken_line is not None:
        if scan.header is None:
            recovery = "the header is lost, so the run starts again from round 0"
        else:
            recovery = (f"the header and {rounds_text(len(scan.rounds))} before it are intact, and the run resumes at "
                        f"round {len(scan.rounds)}")
        raise RecordError(f"{path}, line {scan.broken_line}: {scan.problem}. Recover with `embedcache repair --runs {path}`: "
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


def check_identity(path: Path, existing: RunHeader, header: RunHeader) -> None:
    """Refuse to continue a record made with another configuration, naming the fields that differ."""
    diff = existing.differences(header)
    if diff:
        raise RecordError(f"{path} belongs to another run configuration (differs in: {', '.join(diff)}); write to "
                          "another `out` folder or remove it")


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

    def __init__(self, path: str | Path, header: RunHeader):
        self.path = Path(path)
        self.rounds: list[RoundRecord] = []
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
                self._append(header.to_dict())
        except OSError as e:
            self.close()
            raise unwritable(self.path.parent, e) from None
        except BaseException:
            self.close()
            raise

    @property
    def complete(self) -> bool:
        return len(self.rounds) >= self.header.n_rounds

    def write_round(self, record: RoundRecord) -> None:
        if record.round != len(self.rounds):
            raise ConfigError(f"{self.path}: writing round {record.round} after {len(self.rounds)} rounds")
        self._append(record.to_dict())
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
