"""The batched engine: linear-mode runs of one cache stepped together, round by round.

Runs that share a cache (any mix of strategies, seeds and protocols) are stepped together. Each
round every run fits its own head (the single-run `LinearLearner.fit`; fits that run on one thread
go side by side on the cores), then each evaluation split is read once for the heads of every run
that evaluates, and the pool is read once for the heads of every run whose strategy is an
uncertainty score (`embedcache.kernels.score_topk_many`: each chunk is scored by every head before
the next is read, in memory or streamed from the cache). Every other strategy (random, core-set,
BADGE, ...), and runs that rank a subsample of the pool (`pool_size`), select per run inside the
engine through the `RunState.select` the single-run loop calls. Each run then writes its own record
through `RunState.finish_round`, the single-run loop's code, so every field a record has comes from
one place.

Records: by default each head's product is its own BLAS call on the chunks the single-run loop
uses, so every record is the single-run loop's bit for bit (the determinism contract,
kernels/README.md), whatever the batch holds. With `stack=True` the heads form one GEMM per chunk, a
product of another shape: scores then agree with the single-run loop's within the contract's
tolerance and acquisitions up to ties. Runs resume from their records and finished ones are
skipped, as in the single-run loop; the engine holds every record's lock while it steps them. Runs
whose pool or evaluation splits differ form separate batches.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import time
from typing import Callable, Iterator, Sequence

import numpy as np

from embedcache.devices import torch_threads
from embedcache.kernels import predict_many, score_topk_many
from embedcache.kernels.cpu import default_threads
from embedcache.learners.linear import LinearLearner
from embedcache.loop import PlannedRun, RunState, predicted_classes
from embedcache.records import RoundRecord, Run, RunWriter, read_run
from embedcache.strategies.uncertainty import UncertaintyStrategy

#: on_round(run, record, n_rounds): after each round a run writes.
OnBatchRound = Callable[[PlannedRun, RoundRecord, int], None]


def run_batch(planned: Sequence[PlannedRun], make_learner: Callable[[], LinearLearner],
              on_round: OnBatchRound | None = None, stack: bool = False) -> list[Run]:
    """Run (resume, or skip when finished) the planned runs of one session together; their records, in order.

    `make_learner` makes a fresh linear learner over the session's features (one per run; they share
    the prepared pool and evaluation blocks). Every record's lock is taken before the first round.
    `stack`: one product per chunk for all heads instead of one per head (see the module docstring).
    """
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with contextlib.ExitStack() as locks:
        states = []
        for run in planned:
            if run.complete:
                continue
            writer = locks.enter_context(RunWriter(run.path, dataclasses.replace(run.header, created=created)))
            if not writer.complete:  # else finished by another process since it was planned
                states.append(RunState(run, writer))
        groups: dict[tuple, list[RunState]] = {}
        for state in states:
            protocol = state.protocol
            groups.setdefault((protocol.pool_split, protocol.eval_splits), []).append(state)
        for group in groups.values():
            _step(group, make_learner, on_round, stack)
    return [run.existing if run.complete else read_run(run.path) for run in planned]


def _step(states: list[RunState], make_learner: Callable[[], LinearLearner], on_round: OnBatchRound | None,
          stack: bool) -> None:
    """Step runs with the same pool and evaluation rows to their last round."""
    learners = [make_learner() for _ in states]
    plan = states[0].plan
    learners[0].prepare(plan.pool, plan.evaluation)
    for learner in learners[1:]:
        learner.share_prepared(learners[0])
    for state, learner in zip(states, learners):
        state.start(learner)
    labels = plan.metadata.label
    with _fitting_threads() as fitting:
        while live := [(state, learner) for state, learner in zip(states, learners) if not state.done]:
            started = time.perf_counter()
            rows = [state.labelled_rows() for state, _ in live]
            side_by_side = [learner.fits_on_one_thread(labels[r]) for (_, learner), r in zip(live, rows)]
            with fitting.one_thread():
                list(fitting.pool.map(lambda pair: pair[0].fit(pair[1]), [p for p, s in zip(live, side_by_side) if s]))
            for pair, alone in zip(live, side_by_side):
                if not alone:  # a solver that uses torch's threads itself
                    pair[0].fit(pair[1])
            _round(live, rows, started, on_round, stack)


class _Fitting:
    """Threads that fit heads side by side (torch releases the GIL in its kernels). Only fits that run on one
    thread throughout go there (`LinearLearner.fits_on_one_thread`), with torch held at one thread per
    call meanwhile, so each fit gives the bits it gives in the single-run loop."""

    def __init__(self, pool: concurrent.futures.ThreadPoolExecutor):
        self.pool = pool

    @staticmethod
    def one_thread() -> contextlib.AbstractContextManager:
        return torch_threads(1)


@contextlib.contextmanager
def _fitting_threads() -> Iterator[_Fitting]:
    with concurrent.futures.ThreadPoolExecutor(max(1, default_threads()), thread_name_prefix="fit") as pool:
        yield _Fitting(pool)


def _round(live: list[tuple[RunState, LinearLearner]], rows: list[np.ndarray], started: float,
           on_round: OnBatchRound | None, stack: bool) -> None:
    """The rest of a round once every live run is fitted: evaluate, acquire, write each run's record."""
    measuring = time.perf_counter()
    predicted = _evaluate(live, stack)
    stop_probas = [state.stop_set_proba(learner) for state, learner in live]  # each run's own stop set
    measured = time.perf_counter() - measuring  # the simulation's own measuring: not part of a round's cost
    candidates = [state.candidates() for state, _ in live]
    acquired = _acquire(live, rows, candidates, stack)
    seconds = (time.perf_counter() - started - measured) / len(live)  # each run's share of the round
    for (state, learner), fitted, stop_proba, chosen, (rows_, scores) in zip(live, rows, stop_probas, candidates,
                                                                             acquired):
        record = state.finish_round(learner, fitted, predicted.get(id(state), {}), stop_proba, chosen, rows_, scores,
                                    seconds)
        if on_round is not None:
            on_round(state.planned, record, state.protocol.n_rounds)


def _fitted_head(learner: LinearLearner) -> bool:
    return len(learner.classes_) > 1


def _evaluate(live: list[tuple[RunState, LinearLearner]], stack: bool) -> dict[int, dict[str, np.ndarray]]:
    """The classes each evaluating run predicts per split; the heads together read each split once."""
    predicted = {}
    stacked = []
    for state, learner in live:
        if not state.evaluates:
            continue
        if _fitted_head(learner):
            stacked.append((state, learner))
        else:  # one class seen so far: no head to stack
            predicted[id(state)] = predicted_classes(learner, state.plan)
    if stacked:
        for split, (_, block) in stacked[0][1].prepared_evaluation.items():
            probabilities = predict_many(block, [learner.head for _, learner in stacked], stack=stack)
            for (state, learner), p in zip(stacked, probabilities):
                predicted.setdefault(id(state), {})[split] = learner.expand(p).argmax(axis=1)
    return predicted


def _acquire(live: list[tuple[RunState, LinearLearner]], rows: list[np.ndarray], candidates: list[np.ndarray | None],
             stack: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each run's (chosen rows, scores): uncertainty strategies from one pass over the pool for all
    their heads, every other strategy per run."""
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0))
    acquired: list[tuple[np.ndarray, np.ndarray]] = [empty] * len(live)
    together = []
    for i, ((state, learner), cand) in enumerate(zip(live, candidates)):
        if cand is None:
            continue
        batchable = isinstance(state.chooser, UncertaintyStrategy) and _fitted_head(learner)
        if batchable and learner.scores_pool_densely(cand):
            together.append(i)
        else:
            acquired[i] = state.select(learner, cand, rows[i])
    if together:
        inputs = [live[i][1].dense_scoring(candidates[i]) for i in together]
        X, rows_of_x, _, tie_keys, table_rows = inputs[0]  # the runs share the prepared pool
        states = [live[i][0] for i in together]
        results = score_topk_many(X, [live[i][1].head for i in together], [s.chooser.name for s in states],
                                  [s.k for s in states], excludes=[exclude for _, _, exclude, _, _ in inputs],
                                  seeds=[s.tie_seed for s in states], rows=rows_of_x, tie_keys=tie_keys, stack=stack)
        for i, (chosen, scores) in zip(together, results):
            acquired[i] = (chosen if table_rows is None else table_rows[chosen], scores)
    return acquired
