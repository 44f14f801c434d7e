"""Where the runs of a grid or a sweep execute: in this process, in local worker processes, or on a
Ray cluster, with the same records wherever they run.

Work travels as `Task`s: a module-level function and small arguments, never features. The AL task
is a `WorkUnit`: runs that share one experiment (one cache, or one dataset × backbone), which the
worker opens once and runs one after another, each run writing its own record and holding that
record's lock itself, exactly as `embedcache al` does in one process: linear units through the
batched engine (`embedcache.engine`), which steps their runs together. A unit retried after its worker
died skips its finished records and resumes the interrupted one, so the records of a sweep with a
lost worker are those of an uninterrupted one.

Executors: `InProcess` (this process, one unit after another), `LocalProcesses` (spawned worker
processes that end with their parent however it ends) and `RayExecutor` (tasks on a Ray cluster;
Ray retries a task whose worker died). Every path a task sees is absolute: a cluster's machines
must see the caches and the output folder at the same paths (a shared file system).
"""

from __future__ import annotations

import abc
import concurrent.futures
import ctypes
import dataclasses
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from embedcache.errors import ConfigError, EmbedcacheError
from embedcache.faults import ENV as CRASH_AT, ONCE_ENV as CRASH_ONCE, crash_point
from embedcache.loop import Plan, plan_run
from embedcache.protocols import Protocol
from embedcache.records import Run, read_run

#: Executor names, as `--executor` takes them.
EXECUTORS = ("local", "ray")
#: How often Ray starts a task again after its worker died (a lost machine, the out-of-memory killer).
RAY_RETRIES = 3
RAY_MISSING = "--executor ray needs Ray: pip install 'embedcache[ray]' (or pip install ray)"


class ExecutorError(EmbedcacheError):
    """A task could not be run to its end: its workers kept dying, or the cluster cannot place it."""


@dataclasses.dataclass(frozen=True)
class Task:
    """`function(*args)`, run wherever the executor places it; `gpus`: one GPU per task where the
    cluster has GPUs (finetuning, extraction), none otherwise."""

    function: Callable[..., Any]
    args: tuple
    gpus: int = 0


#: on_result(task, result): called in the calling process as each task finishes.
OnResult = Callable[[Task, Any], None]


class Executor(abc.ABC):
    """Runs tasks and reports each result to the caller as it arrives."""

    @abc.abstractmethod
    def slots(self) -> int:
        """How many tasks run at once (to split work into about that many pieces, or a few more)."""

    @abc.abstractmethod
    def run(self, tasks: Sequence[Task], on_result: OnResult) -> None:
        """Run every task; the first that fails stops the others from starting and its error is raised."""


class InProcess(Executor):
    """Each task in this process, one after another; what they opened is closed at the end."""

    def slots(self) -> int:
        return 1

    def run(self, tasks, on_result):
        try:
            for task in tasks:
                on_result(task, task.function(*task.args))
        finally:
            close_opened()


class LocalProcesses(Executor):
    """Tasks in `jobs` spawned worker processes on this machine, one torch thread each. The
    workers end with this process however it ends, so no orphan keeps writing records."""

    def __init__(self, jobs: int):
        if jobs < 1:
            raise ConfigError("must be at least 1", param="jobs")
        self.jobs = jobs

    def slots(self) -> int:
        return self.jobs

    def run(self, tasks, on_result):
        if not tasks:
            return
        context = multiprocessing.get_context("spawn")  # fork after torch/OpenMP start-up can deadlock
        with concurrent.futures.ProcessPoolExecutor(min(self.jobs, len(tasks)), mp_context=context,
                                                    initializer=_start_worker, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(task.function, *task.args): task for task in tasks}
            try:
                for future in concurrent.futures.as_completed(futures):
                    on_result(futures[future], future.result())
            except BaseException:
                for future in futures:  # no new tasks start; those running finish their records
                    future.cancel()
                raise


def require_ray():
    """The `ray` module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


class RayExecutor(Executor):
    """Tasks on a Ray cluster: the one at `address` (host:port of its head, or "auto" for the one
    this machine belongs to), else $RAY_ADDRESS, else a Ray instance started for this process
    alone. A task whose worker dies is started again (`retries` times); the fault-injection
    variables (`embedcache.faults`) travel to the workers, so kill tests reach them too."""

    def __init__(self, address: str | None = None, retries: int = RAY_RETRIES):
        self.address = address
        self.retries = retries
        self._started = False

    def _connect(self):
        ray = require_ray()
        if not ray.is_initialized():
            environment = {name: os.environ[name] for name in (CRASH_AT, CRASH_ONCE)
                           if name in os.environ}
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=False,
                         runtime_env={"env_vars": environment} if environment else None)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"--address {self.address}" if self.address else "a local Ray instance"
                raise ConfigError(f"cannot connect to {where} ({e}); start the cluster first (`ray start --head`) "
                                  "or check the address") from None
            self._started = True
        return ray

    def slots(self) -> int:
        ray = self._connect()
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def run(self, tasks, on_result):
        ray = self._connect()
        try:
            has_gpus = ray.cluster_resources().get("GPU", 0) > 0
            remotes, pending = {}, {}
            for task in tasks:
                if task.function not in remotes:
                    remotes[task.function] = ray.remote(task.function)
                remote = remotes[task.function].options(num_cpus=1, num_gpus=task.gpus if has_gpus else 0,
                                                        max_retries=self.retries)
                pending[remote.remote(*task.args)] = task
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    task = pending.pop(ready[0])
                    on_result(task, self._result(ray, ready[0], task))
            except BaseException:
                for ref in pending:  # running tasks are interrupted; their records resume on the next run
                    ray.cancel(ref)
                raise
        finally:
            if self._started:
                ray.shutdown()
                self._started = False

    def _result(self, ray, ref, task: Task):
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, EmbedcacheError):  # a bad record or input: the same error as locally
                raise e.cause from None
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError) as e:
            raise ExecutorError(f"{describe_task(task)}: its worker died {self.retries + 1} times "
                                f"({type(e).__name__}); rerun to resume where the records stop") from None


def create_executor(kind: str = "local", *, address: str | None = None, jobs: int = 1) -> Executor:
    """The executor `--executor kind` names: local (in this process, or `jobs` worker processes) or
    ray (the cluster at `address`). Options that do not apply to the kind are refused."""
    if kind not in EXECUTORS:
        raise ConfigError(f"{kind!r}: choose one of {', '.join(EXECUTORS)}", param="executor")
    if kind == "local":
        if address is not None:
            raise ConfigError("names a Ray cluster: use it with `executor` ray", param="address")
        return InProcess() if jobs == 1 else LocalProcesses(jobs)
    if jobs != 1:
        raise ConfigError("sets local worker processes; with `executor` ray the cluster's CPUs set how many runs "
                          "go at once", param="jobs")
    require_ray()
    return RayExecutor(address)


# ------------------------------------------------------------------------------------------------ AL runs

@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One (strategy, seed) run of a protocol, writing its record into `out_dir`."""

    protocol: Protocol
    strategy: str
    seed: int
    out_dir: str


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """Runs that share one experiment (`LinearExperiment` or `FinetuneExperiment`): one task."""

    experiment: Any
    runs: tuple[RunSpec, ...]

    @property
    def gpus(self) -> int:
        """1 for finetuning on any device but the CPU; linear heads run on CPUs."""
        options = getattr(self.experiment, "options", None)
        return int(options is not None and getattr(options, "device", "cpu") != "cpu")


def describe_task(task: Task) -> str:
    unit = task.args[0] if task.args else None
    if isinstance(unit, WorkUnit):
        names = ", ".join(f"{Path(r.out_dir).name}/{r.strategy}-seed{r.seed}" for r in unit.runs[:3])
        return f"the task of {len(unit.runs)} run(s) ({names}{', ...' if len(unit.runs) > 3 else ''})"
    return f"the task {getattr(task.function, '__name__', task.function)}{task.args}"


def absolute(experiment):
    """The experiment with its paths (`cache`, `root`) absolute, as workers elsewhere need them."""
    changes = {name: Path(getattr(experiment, name)).resolve() for name in ("cache", "root")
               if getattr(experiment, name, None) is not None}
    if getattr(experiment, "progress", None) is not None:
        changes["progress"] = None  # a callback of this process: workers report whole runs only
    return dataclasses.replace(experiment, **changes)


def work_units(groups: Sequence[tuple[Any, Sequence[RunSpec]]], slots: int) -> list[WorkUnit]:
    """Units of at most ceil(runs / (2 × slots)) runs, never mixing experiments: enough pieces to
    keep every slot busy as runs finish unevenly, few enough that each worker opens a cache rarely."""
    total = sum(len(runs) for _, runs in groups)
    size = max(1, math.ceil(total / (2 * max(1, slots))))
    units = []
    for experiment, runs in groups:
        placed = absolute(experiment)
        runs = [dataclasses.replace(r, out_dir=str(Path(r.out_dir).resolve())) for r in runs]
        units += [WorkUnit(placed, tuple(runs[i:i + size])) for i in range(0, len(runs), size)]
    return units


def run_units(executor: Executor, units: Sequence[WorkUnit], done: Callable[[Run], None]) -> None:
    """Every unit's runs on `executor`; `done(run)` in this process as each unit's records are finished."""
    def finished(task: Task, paths: list[str]) -> None:
        for path in paths:
            done(read_run(path))

    executor.run([Task(run_unit, (unit,), unit.gpus) for unit in units], finished)


#: The experiment this worker process opened last and its session, reused by the next unit of it.
_opened: dict[str, Any] = {}


def close_opened() -> None:
    """Close the session `run_unit` keeps open, freeing its features."""
    _opened.pop("experiment", None)
    _opened.pop("plans", None)
    if "session" in _opened:
        _opened.pop("session").close()


def run_unit(unit: WorkUnit) -> list[str]:
    """Run (resume, or skip when finished) each run of the unit in this process; their record paths."""
    if _opened.get("experiment") != unit.experiment:
        close_opened()
        _opened["session"] = unit.experiment.open()
        _opened["experiment"] = unit.experiment
    session = _opened["session"]
    planned = [plan_run(_plan(session, spec.protocol), session.learner_description, spec.strategy, spec.seed,
                        spec.out_dir, session.source, session.ranker) for spec in unit.runs]
    session.run_all([run for run in planned if not run.complete],
                    lambda run, record, n_rounds: crash_point("unit.round-written"))
    return [str(run.path) for run in planned]


def _plan(session, protocol: Protocol) -> Plan:
    """The session's plan of `protocol`, made once per protocol (it checks the features' finiteness)."""
    plans = _opened.setdefault("plans", {})
    if protocol not in plans:
        plans[protocol] = Plan.make(protocol, session.metadata, session.nonfinite_rows)
    return plans[protocol]


# -------------------------------------------------------------------------------------- local workers

#: Seconds between a worker's checks that its parent is alive, where the OS cannot tell it.
_PARENT_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _start_worker(parent: int) -> None:
    """Worker initializer: end with the parent, one thread per worker (they share the cores)."""
    _exit_with_parent(parent)
    import torch

    torch.set_num_threads(1)


def _exit_with_parent(parent: int) -> None:
    """End this process as soon as `parent` ends, however it ends (kill -9 included), so no orphan
    keeps appending to records that a rerun then writes too.

    Linux: the kernel sends SIGKILL when the thread that started this process exits;
    ProcessPoolExecutor starts its workers from the thread that submits the tasks, which waits in
    `LocalProcesses.run` until they are done. Elsewhere, and as a backstop, a daemon thread watches
    the parent's pid.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="exit-with-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)
