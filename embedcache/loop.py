"""The active-learning loop. It drives any learner (`fit(rows, y)`, `predict_proba(rows)`) and never
knows whether that is a linear head on cached embeddings or a finetuned network.

Round r: fit on the labelled set, evaluate the requested splits, then (unless the budget is spent)
score the unlabelled pool (a fresh random subsample of it each round when the protocol has a
`pool_size`) and acquire the next batch. Round 0 trains on the seed set. Every random choice (seed
set, pool subsample, tie-breaks, the random strategy) is drawn from the run seed and the round
number, so a run is reproducible, and a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path
from typing import Callable

import numpy as np

from embedcache.acquisition import create_strategy
from embedcache.cache import library_versions
from embedcache.errors import ConfigError
from embedcache.metadata import LABEL, Metadata
from embedcache.metrics import evaluate, group_column
from embedcache.protocols import Protocol
from embedcache.records import Run, RunWriter, read_run, record_path

#: on_round(record, n_rounds): called after each round is written.
OnRound = Callable[[dict, int], None]
_PURPOSES = {"seed-set": 1, "pool": 2, "ties": 3}


def _rng(seed: int, purpose: str, round_: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, _PURPOSES[purpose], round_])


def _round_seed(seed: int, round_: int) -> int:
    return int(np.random.SeedSequence([seed, _PURPOSES["ties"], round_]).generate_state(1)[0])


def seed_set(labels: np.ndarray, rows: np.ndarray, size: int, balanced: bool, rng: np.random.Generator) -> np.ndarray:
    """`size` rows drawn from `rows`: uniformly, or class-balanced (equal counts per class present,
    the remainder spread over randomly chosen classes that have one more example to give)."""
    if size > len(rows):
        raise ConfigError(f"seed set of {size} needs more examples than the pool has ({len(rows)})")
    if not balanced:
        return np.sort(rng.choice(rows, size=size, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    base, extra = divmod(size, len(classes))
    short = [(int(c), int(n)) for c, n in zip(classes, counts) if n < base]
    if short:
        c, n = short[0]
        raise ConfigError(f"a class-balanced seed set of {size} needs {base} examples of each of {len(classes)} "
                          f"classes, but class {c} has only {n} in the pool; use a smaller --seed-size or "
                          "--no-seed-balanced")
    quota = dict.fromkeys(classes.tolist(), base)
    spare = [c for c, n in zip(classes.tolist(), counts) if n > base]
    if extra > len(spare):
        raise ConfigError(f"a class-balanced seed set of {size} cannot be drawn: too few classes with spare examples")
    for c in rng.choice(spare, size=extra, replace=False).tolist():
        quota[c] += 1
    chosen = [rng.choice(rows[labels == c], size=q, replace=False) for c, q in quota.items() if q]
    return np.sort(np.concatenate(chosen))


@dataclasses.dataclass
class Plan:
    """A protocol checked against the data: the rows every round uses, before any file is written."""

    protocol: Protocol
    metadata: Metadata
    pool: np.ndarray
    evaluation: dict[str, np.ndarray]
    evaluation_metadata: dict[str, Metadata]

    @classmethod
    def make(cls, protocol: Protocol, metadata: Metadata) -> "Plan":
        pool = metadata.split_indices(protocol.pool_split)
        unknown = pool[metadata.label[pool] < 0]
        if len(unknown):
            raise ConfigError(f"{len(unknown)} example(s) of the pool split {protocol.pool_split!r} have no label "
                              f"(-1), e.g. id {metadata.ids[unknown[0]]!r}; AL needs the pool's labels to simulate "
                              "the annotator")
        needed = protocol.seed_size + protocol.budget
        if needed > len(pool):
            raise ConfigError(f"seed set {protocol.seed_size} + budget {protocol.budget} = {needed} examples, but the "
                              f"pool split {protocol.pool_split!r} has only {len(pool)}")
        evaluation = {}
        for split in protocol.eval_splits:
            rows = metadata.split_indices(split)
            if not len(rows):
                raise ConfigError(f"evaluation split {split!r} is empty")
            if (metadata.label[rows] < 0).any():
                raise ConfigError(f"evaluation split {split!r} has examples without labels")
            evaluation[split] = rows
        protocol.evaluation.check(metadata)
        return cls(protocol, metadata, pool, evaluation, {k: metadata.take(v) for k, v in evaluation.items()})

    def header_groups(self) -> list[str]:
        """Columns whose values are recorded for every acquisition."""
        return [LABEL, *self.metadata.groups]

    def pool_counts(self) -> dict[str, dict[str, int]]:
        specs = dict.fromkeys([*self.header_groups(), *self.protocol.evaluation.groups])
        counts = {}
        for spec in specs:
            codes, names = group_column(self.metadata, spec)
            values = np.bincount(codes[self.pool], minlength=len(names))
            counts[spec] = {names[c]: int(values[c]) for c in np.flatnonzero(values)}
        return counts

    def group_values(self, rows: np.ndarray) -> dict[str, list[str]]:
        result = {}
        for column in self.header_groups():
            codes, names = self.metadata.column(column)
            result[column] = [names[c] for c in codes[rows]]
        return result


def open_record(learner, metadata: Metadata, protocol: Protocol, strategy: str, seed: int, out_dir: str | Path,
                source: dict) -> tuple[Plan, np.ndarray, RunWriter]:
    """Check the protocol against the data and open the run's record: a new one, or the existing one
    if it was made with the same configuration (`RunWriter` refuses any other)."""
    plan = Plan.make(protocol, metadata)
    create_strategy(strategy)  # an unknown name fails before any file is written
    seed_rows = seed_set(metadata.label[plan.pool], plan.pool, protocol.seed_size, protocol.seed_balanced,
                         _rng(seed, "seed-set"))
    describe = getattr(learner, "describe", dict)
    header = {
        "mode": describe().get("learner", type(learner).__name__), "strategy": strategy, "seed": int(seed),
        "protocol": protocol.to_dict(), "learner": describe(), "fingerprint": source["fingerprint"],
        "data": source.get("data") or metadata.fingerprint(), "backbone": source.get("backbone", ""),
        "source": source, "n_rounds": protocol.n_rounds,
        "seed_ids": metadata.ids[seed_rows].tolist(), "seed_groups": plan.group_values(seed_rows),
        "pool_counts": plan.pool_counts(), "versions": library_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return plan, seed_rows, RunWriter(record_path(out_dir, strategy, seed), header)


def run_al(learner, metadata: Metadata, protocol: Protocol, strategy: str, seed: int, out_dir: str | Path, *,
           source: dict, on_round: OnRound | None = None) -> Run:
    """Run (or resume, or skip if finished) one (strategy, seed) run and return its record.

    `source` describes the features: at least `fingerprint` (cache recipe or backbone recipe),
    `backbone` (a label for plots) and `data` (a fingerprint of the examples: the dataset manifest;
    the metadata's when absent); it goes into the record header. A record is resumed or reused only
    if features, data, protocol, learner and strategy are all the same.
    """
    plan, seed_rows, writer = open_record(learner, metadata, protocol, strategy, seed, out_dir, source)
    if writer.complete:
        return read_run(writer.path)
    chooser = create_strategy(strategy)
    labels = metadata.label
    schedule = protocol.schedule()
    row_of = {i: r for r, i in enumerate(metadata.ids)}
    labeled = [seed_rows] + [np.array([row_of[i] for i in r["acquired"]["ids"]], dtype=np.int64)
                             for r in writer.rounds]
    if hasattr(learner, "prepare"):
        learner.prepare(plan.pool, plan.evaluation)
    if getattr(learner, "warm_start", False):  # rebuild the warm-start chain the finished rounds left
        for r in range(len(writer.rounds)):
            rows = np.concatenate(labeled[:r + 1])
            learner.fit(rows, labels[rows])
    is_labeled = np.zeros(len(metadata), dtype=bool)
    for rows in labeled:
        is_labeled[rows] = True
    for r in range(len(writer.rounds), protocol.n_rounds):
        started = time.perf_counter()
        rows = np.concatenate(labeled)
        learner.fit(rows, labels[rows])
        record: dict = {"round": r, "n_labeled": int(len(rows))}
        last = r == protocol.n_rounds - 1
        record["metrics"] = {}
        if r % protocol.eval_every == 0 or last:
            for split, eval_rows in plan.evaluation.items():
                predicted = learner.predict_proba(eval_rows).argmax(axis=1)
                record["metrics"][split] = evaluate(labels[eval_rows], predicted, plan.evaluation_metadata[split],
                                                    protocol.evaluation)
        record["training"] = dict(getattr(learner, "training_", {}))
        chosen, scores, pool_size = np.zeros(0, dtype=np.int64), np.zeros(0), 0
        if not last:
            candidates = plan.pool[~is_labeled[plan.pool]]
            if protocol.pool_size is not None and protocol.pool_size < len(candidates):
                candidates = np.sort(_rng(seed, "pool", r).choice(candidates, protocol.pool_size, replace=False))
            pool_size = len(candidates)
            chosen, scores = chooser.select(learner, candidates, schedule[r], _round_seed(seed, r))
            is_labeled[chosen] = True
            labeled.append(np.asarray(chosen, dtype=np.int64))
        record["acquired"] = {"ids": metadata.ids[chosen].tolist(), "scores": np.asarray(scores, float).tolist(),
                              "groups": plan.group_values(chosen)}
        record["pool_size"] = pool_size
        record["seconds"] = time.perf_counter() - started
        writer.write_round(record)
        if on_round is not None:
            on_round(record, protocol.n_rounds)
    return read_run(writer.path)
