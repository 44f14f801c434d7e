"""`embedcache sweep PLAN.toml`: a whole study — features × strategies × seeds × protocol variants —
from one file, run wherever an executor runs it, resumable like `embedcache al`.

The plan file (TOML), every path in it relative to the file's folder:

    out = "runs/fig9"                          # the sweep root (required)
    caches = ["caches/wb-matched-*.h5"]        # linear mode: cache files or globs
    strategies = ["least-confidence", "random"]
    seeds = "0-15"                             # or a list: [0, 1, 2]

    [protocol]
    preset = "waterbirds"                      # a preset; any other key overrides one of its fields
    budget = 160

    [vary]                                     # each key: a list of values, one grid cell per combination
    per_round = [5, [5, 5, 10, 20]]            # a schedule is itself a list

    [linear]                                   # the linear head: C, standardize, solver, device; batch (runs
                                               # the batched engine steps together, 1: one at a time);
                                               # in_memory = false streams the pool from the cache
    C = 1.0

    [executor]
    kind = "local"                             # local | ray
    jobs = 2                                   # local worker processes
    # address = "10.0.0.1:6379"                # ray: the cluster's head

Finetune mode takes `[[datasets]]` entries instead of (or besides) `caches` — `dataset`, `root`,
`backbone`, and optionally `weights`, `init_seed`, `options` (a table of adapter options),
`max_length`, `pooling`, `name` — and a `[finetune]` table for how to train: `recipe` (a table of
recipe overrides), `device`, `amp`, `micro_batch`, `eval_batch_size`, `workers`, `train_seed`.

A strategy is a name or a table `{name = "...", option = value}` with the options `--strategy
name:option=value` takes (e.g. `{name = "probcover", delta = 0.3}`); an option the strategy does not
declare, or a bad value, is refused naming both. `[vary]` takes protocol fields and the
linear head's C, standardize and solver.

Every cell writes into its own folder under the root, named from its values — the features' name
(a cache's file name without `.h5`), then `key=value` for each `[vary]` key, joined by `__`, e.g.
`wb-0.50__per_round=5` — and `sweep.json` at the root lists the cells and the axes
(`embedcache.sweep_index`), which `embedcache report ROOT` groups curves by. Everything is
checked before the first byte is written: the file's keys and values, every cache and dataset,
every protocol against its data, and every record already there.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import itertools
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from embedcache.strategies import STRATEGIES, StrategySpec, strategy_spec
from embedcache.errors import ConfigError, EmbedcacheError
from embedcache.executors import EXECUTORS, Executor, RunSpec, create_executor, run_units, work_units
from embedcache.experiments import BATCH, FinetuneExperiment, LinearExperiment, Session, parse_seeds, plan_runs
from embedcache.learners.finetune import FinetuneOptions
from embedcache.learners.linear import LinearConfig
from embedcache.loop import PlannedRun
from embedcache.protocols import PROTOCOLS, Protocol, get_protocol
from embedcache.records import RecordLock, Run
from embedcache.sweep_index import INDEX, Cell, SweepIndex, read_index, value_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, from PyPI
    import tomli as tomllib

#: Protocol fields a plan may set or vary, with the TOML types each takes.
PROTOCOL_FIELDS: dict[str, tuple[type, ...]] = {
    "seed_size": (int,), "seed_balanced": (bool,), "seed_strategy": (str,), "per_round": (int, list), "budget": (int,),
    "pool_size": (int,), "candidates": (str,), "pool_split": (str,), "eval_splits": (list,), "eval_every": (int,),
    "groups": (list,), "worst_group": (str,), "metrics": (list,), "percentiles": (list,), "stop_set_size": (int,)}
LINEAR_FIELDS: dict[str, tuple[type, ...]] = {"C": (float, int), "standardize": (bool,), "solver": (str,),
                                              "device": (str,), "batch": (int,),
                                              "in_memory": (bool,)}
FINETUNE_FIELDS: dict[str, tuple[type, ...]] = {
    "recipe": (dict,), "device": (str,), "amp": (str,), "micro_batch": (int,), "eval_batch_size": (int,),
    "workers": (int,), "train_seed": (int,)}
DATASET_FIELDS: dict[str, tuple[type, ...]] = {
    "dataset": (str,), "root": (str,), "backbone": (str,), "weights": (str,), "init_seed": (int,), "options": (dict,),
    "max_length": (int,), "pooling": (str,), "name": (str,)}
EXECUTOR_FIELDS: dict[str, tuple[type, ...]] = {"kind": (str,), "jobs": (int,), "address": (str,)}
TOP_LEVEL: dict[str, tuple[type, ...]] = {
    "out": (str,), "caches": (list,), "datasets": (list,), "strategies": (list,), "seeds": (str, list, int),
    "protocol": (dict,), "vary": (dict,), "linear": (dict,), "finetune": (dict,), "executor": (dict,)}
#: [vary] keys of the linear head (the rest are protocol fields).
VARY_LINEAR = ("C", "standardize", "solver")
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
               dict: "a table"}


@dataclasses.dataclass(frozen=True)
class Features:
    """One entry of `caches` or `datasets`: a name for folders and curves, and its experiment."""

    name: str
    experiment: LinearExperiment | FinetuneExperiment


@dataclasses.dataclass(frozen=True)
class SweepCell:
    """One grid cell: features, protocol and learner options; its records go to `root / folder`."""

    folder: str
    values: dict[str, Any]
    experiment: LinearExperiment | FinetuneExperiment
    protocol: Protocol


@dataclasses.dataclass(frozen=True)
class ExecutorChoice:
    """The plan's `[executor]` table (the command line may override it)."""

    kind: str = "local"
    jobs: int = 1
    address: str | None = None


@dataclasses.dataclass
class SweepPlan:
    """A plan file read and checked (its data not yet opened: `check_sweep` does that)."""

    path: Path
    root: Path
    strategies: list[StrategySpec]
    seeds: list[int]
    axes: dict[str, list]
    cells: list[SweepCell]
    executor: ExecutorChoice

    @property
    def runs_per_cell(self) -> int:
        return len(self.strategies) * len(self.seeds)


class _Where:
    """Names a place in the plan file for error messages: "plan.toml, [protocol] budget"."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}, {key}: {message}")

    def check(self, value: Any, kinds: tuple[type, ...], key: str) -> Any:
        ok = any(isinstance(value, k) and not (isinstance(value, bool) and k in (int, float)) for k in kinds)
        if not ok:
            expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise self.error(key, f"expected {expected}, got {value!r}")
        return value

    def table(self, data: Any, known: dict[str, tuple[type, ...]], section: str, prefix: str | None = None) -> dict:
        """`data` checked as a table whose keys are `known` with their types; errors name a key as
        `prefix` + key (default "[section] key")."""
        if prefix is None:
            prefix = f"[{section}] " if section else ""
        self.check(data, (dict,), f"[{section}]" if section else "the file")
        for key, value in data.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
                raise self.error(f"{prefix}{key}", f"unknown key{hint}")
            self.check(value, known[key], f"{prefix}{key}")
        return data


def load_plan(path: str | Path) -> SweepPlan:
    """Read a plan file and check everything that does not need the data: keys and their types,
    strategies, seeds, the protocol and learner options of every cell, that every cache exists and
    every glob matches, and that cell folders are distinct. Errors name the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the sweep plan ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a TOML file ({e})") from None
    where = _Where(path)
    where.table(data, TOP_LEVEL, "")
    base = path.parent
    for key in ("out", "strategies", "seeds"):
        if key not in data:
            raise where.error(key, "missing; a plan names its output root (out), strategies and seeds")
    if not data.get("caches") and not data.get("datasets"):
        raise where.error("caches", "missing; a plan needs caches (linear mode) or [[datasets]] entries (finetune)")
    strategies = _strategies(data["strategies"], where)
    seeds = _seeds(data["seeds"], where)
    protocol_table = dict(where.table(data.get("protocol", {}), {"preset": (str,), **PROTOCOL_FIELDS}, "protocol"))
    preset = protocol_table.pop("preset", "custom")
    if preset not in PROTOCOLS:
        raise where.error("[protocol] preset", f"unknown preset {preset!r}; known: {', '.join(PROTOCOLS.names())}")
    vary = where.table(data.get("vary", {}), {k: (list,) for k in [*PROTOCOL_FIELDS, *VARY_LINEAR]}, "vary")
    linear_table = where.table(data.get("linear", {}), LINEAR_FIELDS, "linear")
    for key, values in vary.items():
        if key in protocol_table or key in linear_table:
            raise where.error(f"[vary] {key}", f"also set in [{'protocol' if key in protocol_table else 'linear'}]; "
                                               "give it in one place")
        if not values:
            raise where.error(f"[vary] {key}", "expected a non-empty list of values, one cell each")
        kinds = vary_kinds(key)
        for i, value in enumerate(values):
            where.check(value, kinds, f"[vary] {key}[{i}]")
        texts = [value_text(v) for v in values]
        if len(set(texts)) < len(texts):
            raise where.error(f"[vary] {key}", f"lists a value twice: {values}")
    features = _caches(data.get("caches", []), base, where, linear_table)
    features += _datasets(data.get("datasets", []), base, where, data.get("finetune", {}))
    names = [f.name for f in features]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise where.error("datasets", f"two entries are both named {repeated[0]!r}; give them distinct `name`s")
    axis = _features_axis(data)
    axes = {axis: names, **vary}
    cells = []
    for feature in features:
        for combination in itertools.product(*vary.values()):
            values = dict(zip(vary, combination))
            protocol = _protocol(get_protocol(preset), {**protocol_table, **{k: v for k, v in values.items()
                                                                              if k in PROTOCOL_FIELDS}}, where)
            experiment = feature.experiment
            linear_changes = {k: v for k, v in values.items() if k in VARY_LINEAR}
            if linear_changes:
                experiment = _with_linear(experiment, linear_changes, where)
            folder = "__".join([_slug(feature.name)] + [f"{k}={_slug(value_text(v))}" for k, v in values.items()])
            cells.append(SweepCell(folder, {axis: feature.name, **values}, experiment, protocol))
    executor = _executor(data.get("executor", {}), where)
    return SweepPlan(path, (base / data["out"]).resolve(), strategies, seeds, axes, cells, executor)


def vary_kinds(key: str) -> tuple[type, ...]:
    return LINEAR_FIELDS[key] if key in VARY_LINEAR else PROTOCOL_FIELDS[key]


def _features_axis(data: dict) -> str:
    if data.get("caches") and data.get("datasets"):
        return "features"
    return "cache" if data.get("caches") else "dataset"


def _slug(text: str) -> str:
    """A folder-name-safe form of a name or value: letters, digits and . _ , + = - kept."""
    return re.sub(r"[^A-Za-z0-9._,+=-]+", "-", text).strip("-") or "_"


def _strategies(entries: list, where: _Where) -> list[StrategySpec]:
    if not entries:
        raise where.error("strategies", "empty; name at least one strategy")
    specs = []
    for i, entry in enumerate(entries):
        key = f"strategies[{i}]"
        if isinstance(entry, dict):
            options = dict(entry)
            name = options.pop("name", None)
            if not isinstance(name, str):
                raise where.error(key, "a strategy table needs name = \"...\"")
        else:
            name, options = where.check(entry, (str, dict), key), {}
        if name not in STRATEGIES:
            close = difflib.get_close_matches(name, STRATEGIES.names(), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise where.error(key, f"unknown strategy {name!r}; known: {', '.join(STRATEGIES.names())}.{hint}")
        try:
            specs.append(strategy_spec(name, options))
        except ConfigError as e:
            raise where.error(key, e.message) from None
    names = [s.text for s in specs]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise where.error("strategies", f"{twice!r} is listed twice (a cell holds one record per strategy and seed)")
    return specs


def _seeds(value: Any, where: _Where) -> list[int]:
    if isinstance(value, str):
        try:
            return parse_seeds(value)
        except ConfigError as e:
            raise where.error("seeds", e.message) from None
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise where.error("seeds", f"expected a text such as \"0-15\" or a list of non-negative integers, got "
                                   f"{value!r}")
    return sorted(dict.fromkeys(values))


def _protocol_value(key: str, value: Any, where: _Where, section: str) -> Any:
    """A TOML value as the Protocol field takes it (lists become tuples; "user:10" percentiles pairs)."""
    if key == "per_round" and isinstance(value, list):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise where.error(f"[{section}] per_round", f"a schedule is a list of integers, got {value!r}")
        return tuple(value) if len(value) > 1 else value[0]
    if key == "percentiles":
        pairs = []
        for item in value:
            group, _, q = str(item).rpartition(":")
            if not group or not q.replace(".", "", 1).isdigit():
                raise where.error(f"[{section}] percentiles", f"expected \"GROUP:Q\" such as \"user:10\", got {item!r}")
            pairs.append((group, int(q) if float(q).is_integer() else float(q)))
        return tuple(pairs)
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise where.error(f"[{section}] {key}", f"expected a list of strings, got {value!r}")
        return tuple(value)
    return value


def _protocol(preset: Protocol, overrides: dict, where: _Where) -> Protocol:
    changes = {k: _protocol_value(k, v, where, "protocol") for k, v in overrides.items()}
    try:
        return preset.replace(**changes)
    except ConfigError as e:
        raise where.error(f"[protocol] {e.param}" if e.param else "[protocol]", e.message) from None


def _linear(table: dict, where: _Where) -> LinearConfig:
    try:
        return LinearConfig(**{k: float(v) if k == "C" else v for k, v in table.items()
                               if k not in ("batch", "in_memory")})
    except ConfigError as e:
        raise where.error("[linear]", str(e)) from None


def _with_linear(experiment, changes: dict, where: _Where):
    config = experiment.learner if isinstance(experiment, LinearExperiment) else experiment.linear
    try:
        config = dataclasses.replace(config, **{k: float(v) if k == "C" else v for k, v in changes.items()})
    except ConfigError as e:
        raise where.error("[vary]", str(e)) from None
    if isinstance(experiment, LinearExperiment):
        return dataclasses.replace(experiment, learner=config)
    raise where.error("[vary]", f"{', '.join(changes)} vary the linear head, which [[datasets]] entries do not use")


def _caches(entries: list, base: Path, where: _Where, linear_table: dict) -> list[Features]:
    config = _linear(linear_table, where)
    paths: list[Path] = []
    for i, entry in enumerate(entries):
        pattern = where.check(entry, (str,), f"caches[{i}]")
        if glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(str(base / pattern)))
            if not found:
                raise where.error(f"caches[{i}]", f"{pattern!r} matches no file (relative to {base})")
            paths += found
        elif not (base / pattern).is_file():
            raise where.error(f"caches[{i}]", f"{base / pattern}: no such cache file")
        else:
            paths.append(base / pattern)
    paths = list(dict.fromkeys(p.resolve() for p in paths))
    stems = [p.stem for p in paths]
    if len(set(stems)) < len(stems):  # same file names in several folders: name them by their path
        common = Path(os.path.commonpath([p.parent for p in paths]))
        stems = [str(p.relative_to(common).with_suffix("")).replace(os.sep, "-") for p in paths]
    batch, in_memory = linear_table.get("batch", BATCH), linear_table.get("in_memory", True)
    try:
        return [Features(stem, LinearExperiment(p, config, batch, in_memory)) for stem, p in zip(stems, paths)]
    except ConfigError as e:
        raise where.error("[linear] batch", str(e)) from None


def _datasets(entries: list, base: Path, where: _Where, finetune_table: dict) -> list[Features]:
    table = where.table(finetune_table, FINETUNE_FIELDS, "finetune")
    recipe = {k: value_text(v) for k, v in table.get("recipe", {}).items()}
    try:
        options = FinetuneOptions(**{("num_workers" if k == "workers" else k): v for k, v in table.items()
                                     if k != "recipe"})
    except ConfigError as e:
        raise where.error("[finetune]", str(e)) from None
    features = []
    for i, entry in enumerate(entries):
        key = f"datasets[{i}]"
        entry = where.table(entry, DATASET_FIELDS, key, prefix=f"{key}.")
        missing = [k for k in ("dataset", "root", "backbone") if k not in entry]
        if missing:
            raise where.error(key, f"missing {', '.join(missing)}")
        weights = entry.get("weights", "pretrained")
        if weights not in ("pretrained", "random"):
            weights = str((base / weights).resolve())
        experiment = FinetuneExperiment(
            entry["dataset"], (base / entry["root"]).resolve(), entry["backbone"],
            {k: value_text(v) for k, v in entry.get("options", {}).items()}, weights, entry.get("init_seed", 0),
            entry.get("max_length"), entry.get("pooling"), recipe, options)
        label = entry["backbone"].partition(":")[2] or entry["backbone"]
        name = entry.get("name") or "-".join([Path(entry["root"]).name, label]
                                             + ([] if weights == "pretrained" else [Path(weights).stem]))
        features.append(Features(name, experiment))
    return features


def _executor(table: dict, where: _Where) -> ExecutorChoice:
    table = where.table(table, EXECUTOR_FIELDS, "executor")
    kind = table.get("kind", "local")
    if kind not in EXECUTORS:
        raise where.error("[executor] kind", f"{kind!r}: choose one of {', '.join(EXECUTORS)}")
    jobs = table.get("jobs", 1)
    if jobs < 1:
        raise where.error("[executor] jobs", "must be at least 1")
    return ExecutorChoice(kind, jobs, table.get("address"))


def plan_executor(plan: SweepPlan, kind: str | None = None, address: str | None = None,
                  jobs: int | None = None) -> Executor:
    """The executor of the plan's [executor] table, with `kind`, `address` and `jobs` (the command
    line's) taking its place where given."""
    chosen = plan.executor
    kind = kind or chosen.kind
    if address is None and kind == chosen.kind:
        address = chosen.address
    if jobs is None:
        jobs = chosen.jobs if kind == "local" else 1
    return create_executor(kind, address=address, jobs=jobs)


# ------------------------------------------------------------------------------------------ checking, running

@dataclasses.dataclass
class CheckedCell:
    """A cell with every run planned against its data, and what its index entry says of it."""

    cell: SweepCell
    runs: list[PlannedRun]
    about: dict[str, Any]


def _about(session: Session) -> dict[str, Any]:
    source = session.source
    about = {"features": source.backbone, "fingerprint": source.fingerprint, "dataset": source.dataset}
    return {**about, "cache": source.cache} if source.cache else about


def check_sweep(plan: SweepPlan) -> list[CheckedCell]:
    """Open every cell's data once per experiment (metadata only; features checked a block at a
    time) and plan every run: protocol against data, strategies, records of another configuration.
    Nothing is written. An error names the plan file and the cell."""
    checked = []
    for experiment, cells in _by_experiment(plan.cells):
        try:
            session = experiment.open(learners=False)
        except EmbedcacheError as e:
            raise type(e)(f"{plan.path}, cell {cells[0].folder}: {e}") from None
        try:
            for cell in cells:
                try:
                    runs = plan_runs(session, cell.protocol, [s.text for s in plan.strategies], plan.seeds,
                                     plan.root / cell.folder)
                except EmbedcacheError as e:
                    raise type(e)(f"{plan.path}, cell {cell.folder}: {e}") from None
                checked.append(CheckedCell(cell, runs, _about(session)))
        finally:
            session.close()
    order = {cell.folder: i for i, cell in enumerate(plan.cells)}
    return sorted(checked, key=lambda c: order[c.cell.folder])


def _by_experiment(cells: Sequence[SweepCell]) -> list[tuple[Any, list[SweepCell]]]:
    groups: list[tuple[Any, list[SweepCell]]] = []
    for cell in cells:
        for experiment, members in groups:
            if experiment == cell.experiment:
                members.append(cell)
                break
        else:
            groups.append((cell.experiment, [cell]))
    return groups


def sweep_index(plan: SweepPlan, checked: Sequence[CheckedCell]) -> SweepIndex:
    return SweepIndex(str(plan.path.resolve()), plan.axes,
                      [Cell(c.cell.folder, c.cell.values, c.about) for c in checked])


def _check_root(plan: SweepPlan) -> None:
    """A sweep root is new, empty, or this sweep's: a plan may add cells to it, never drop cells
    whose records are there (they would leave the index, and the report)."""
    root = plan.root
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{plan.path}, out: {root} is a file, not a folder")
    if not root.is_dir():
        return
    index = read_index(root)
    if index is None:
        if any(root.iterdir()):
            raise ConfigError(f"{plan.path}, out: {root} holds files but no {INDEX}, so no sweep wrote it; choose a "
                              "new or empty folder")
        return
    folders = {cell.folder for cell in plan.cells}
    dropped = [c.folder for c in index.cells if c.folder not in folders and (root / c.folder).is_dir()]
    if dropped:
        raise ConfigError(f"{plan.path}, out: {root} holds cells this plan does not have ({', '.join(dropped[:3])}"
                          f"{', ...' if len(dropped) > 3 else ''}; written from {index.plan}); keep them in the plan "
                          "(the same caches and [vary] values), or give another out")


#: on_run(run, finished, total): in this process as each run of the sweep is finished (or found finished).
OnRun = Callable[[Run, int, int], None]


def run_sweep(plan: SweepPlan, executor: Executor, on_run: OnRun | None = None,
              checked: Sequence[CheckedCell] | None = None) -> list[Run]:
    """Run every unfinished run of the plan on `executor` (finished records are read back, not
    rerun; interrupted ones resume). Checks everything first (`check_sweep`, unless given its
    result), then the root and every record's lock, then writes `sweep.json`, then runs."""
    checked = list(checked) if checked is not None else check_sweep(plan)
    _check_root(plan)
    todo = [(c, run) for c in checked for run in c.runs if not run.complete]
    for _, run in todo:  # a read-only folder, or a record another process writes: refused before any write
        with RecordLock(run.path):
            pass
    plan.root.mkdir(parents=True, exist_ok=True)
    sweep_index(plan, checked).write(plan.root)
    finished: list[Run] = []
    total = sum(len(c.runs) for c in checked)

    def done(run: Run) -> None:
        finished.append(run)
        if on_run:
            on_run(run, len(finished), total)

    for c in checked:
        for run in c.runs:
            if run.complete:
                done(run.existing)
    groups: list[tuple[Any, list[RunSpec]]] = []
    for experiment, cells in _by_experiment([c.cell for c in checked]):
        folders = {cell.folder for cell in cells}
        specs = [RunSpec(c.cell.protocol, run.strategy, run.seed, str(run.path.parent))
                 for c, run in todo if c.cell.folder in folders]
        if specs:
            groups.append((experiment, specs))
    if groups:
        run_units(executor, work_units(groups, executor.slots()), done)
    return finished
