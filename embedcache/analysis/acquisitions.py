"""What the strategies asked for: upsampling ratios of groups (paper Fig. 4, 5, 9, 13).

The upsampling ratio of a group value in one run is

    (share of the run's acquisitions with that value) / (share of the pool split with it),

1 for random sampling on average, above 1 where a strategy asks for the value more often than
chance. Acquisitions are the examples the strategy chose; the seed set is not counted (it is
drawn before any model exists). The base rate is the record's `pool_counts` (the whole pool
split, as the loop recorded it); a combination the record lacks (say label*place when the run
evaluated no groups) is counted from the run's cache, which must still exist with the same
fingerprint. Ratios are averaged over seeds with a 95 % CI (see `stats`).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Sequence

import numpy as np

from embedcache.analysis.curves import Curve, CurveKey
from embedcache.analysis.stats import Estimate, estimate
from embedcache.errors import ConfigError
from embedcache.metadata import LABEL
from embedcache.metrics import COMBINE
from embedcache.records import RecordError, Run


def acquisition_specs(runs: Sequence[Run]) -> list[str]:
    """Specs every run can be analysed on: each recorded column, each spec with pool counts over
    recorded columns, and label*column for each group column."""
    per_run = []
    for run in runs:
        columns = run.header.columns
        specs = dict.fromkeys(columns)
        specs.update(dict.fromkeys(s for s in run.header.pool_counts
                                   if all(c in columns for c in s.split(COMBINE))))
        specs.update(dict.fromkeys(f"{LABEL}{COMBINE}{c}" for c in columns if c != LABEL and LABEL in columns))
        per_run.append(specs)
    return [s for s in per_run[0] if all(s in specs for specs in per_run)] if per_run else []


def check_spec(runs: Sequence[Run], spec: str) -> None:
    """ConfigError naming the recorded columns unless every run records every column of `spec`."""
    for run in runs:
        columns = run.header.columns
        missing = [c for c in spec.split(COMBINE) if c not in columns]
        if missing:
            raise ConfigError(f"unknown group {missing[0]!r} in {spec!r}: {run.path} records the columns "
                              f"{columns} (combine them with '*', e.g. {LABEL}{COMBINE}{columns[-1]})")


@functools.lru_cache(maxsize=4)
def _cache_pool_counts(path: str, fingerprint: str, pool_split: str, spec: str) -> dict[str, int]:
    from embedcache.cache import EmbeddingCache
    from embedcache.metrics import group_column

    with EmbeddingCache(path) as cache:
        if cache.fingerprint != fingerprint:
            raise ConfigError(f"{path} no longer holds the features of the run (fingerprint changed)")
        metadata = cache.metadata()
    codes, names = group_column(metadata, spec)
    counts = np.bincount(codes[metadata.split_indices(pool_split)], minlength=len(names))
    return {names[c]: int(counts[c]) for c in np.flatnonzero(counts)}


def pool_counts(run: Run, spec: str) -> dict[str, int]:
    """value → count of `spec` over the run's pool split: from the record, else from its cache."""
    recorded = run.header.pool_counts.get(spec)
    if recorded is not None:
        return recorded
    cache = run.header.source.cache
    if not cache or not Path(cache).is_file():
        raise ConfigError(f"{run.path} records no pool counts for {spec!r} and its cache ({cache}) is not there to "
                          f"count them; it has: {sorted(run.header.pool_counts)}")
    return _cache_pool_counts(cache, run.fingerprint, run.header.pool_split, spec)


@dataclasses.dataclass
class _Acquisitions:
    """One run's acquisitions of a spec: pool values and shares, and per round with acquisitions
    the labels once its batch is labelled and the batch's count per value."""

    run: Run
    column: dict[str, int]
    share: np.ndarray
    labels: np.ndarray
    counts: np.ndarray


def _acquisitions(runs: Sequence[Run], spec: str) -> list[_Acquisitions]:
    """Per run that acquired anything, its acquisitions of `spec` counted per value."""
    result = []
    for run in runs:
        counts = pool_counts(run, spec)
        column = {v: i for i, v in enumerate(counts)}
        labels, rows = [], []
        for r in run.rounds:
            if not len(r.acquired):
                continue
            batch = r.acquired.values(spec)
            unknown = [v for v in batch if v not in column]
            if unknown:
                raise RecordError(f"{run.path}, round {r.round}: acquired {spec}={unknown[0]!r}, which its pool "
                                  "counts do not have")
            labels.append(r.n_labeled + len(batch))
            rows.append(np.bincount([column[v] for v in batch], minlength=len(column)))
        if rows:
            total = np.array(list(counts.values()), dtype=np.float64)
            result.append(_Acquisitions(run, column, total / total.sum(), np.array(labels), np.array(rows)))
    return result


@dataclasses.dataclass
class Upsampling:
    """One group value under one strategy: its pool share, its share of the acquisitions and
    their ratio, each over seeds."""

    key: CurveKey
    spec: str
    value: str
    pool_share: Estimate
    acquired_share: Estimate
    ratio: Estimate

    def to_dict(self) -> dict:
        return {**self.key.columns(), "group": self.spec,
                "value": self.value, "pool_share": self.pool_share.mean,
                "acquired_share": self.acquired_share.to_dict(), "ratio": self.ratio.to_dict()}

    def row(self) -> dict:
        """A flat dict for CSV tables."""
        r = self.ratio
        return {**self.key.columns(), "group": self.spec, "value": self.value,
                "pool_share": self.pool_share.mean, "acquired_share": self.acquired_share.mean, "ratio": r.mean,
                "ratio_sd": r.sd, "ci_low": r.low, "ci_high": r.high, "n_seeds": r.n}


def upsampling(key: CurveKey, runs: Sequence[Run], spec: str, interval: str = "t") -> list[Upsampling]:
    """Upsampling ratio of every value of `spec` in the pool (values in pool order); [] if nothing was acquired."""
    check_spec(runs, spec)
    per_run = []
    for a in _acquisitions(runs, spec):
        acquired = a.counts.sum(axis=0) / a.counts.sum()
        per_run.append((a.column, a.share, acquired, acquired / a.share))
    results = []
    for value in dict.fromkeys(v for column, *_ in per_run for v in column):
        present = [(share[c[value]], acquired[c[value]], ratio[c[value]])
                   for c, share, acquired, ratio in per_run if value in c]
        pool, acquired, ratio = (np.array(x) for x in zip(*present))
        results.append(Upsampling(key, spec, value, estimate(pool, interval), estimate(acquired, interval),
                                  estimate(ratio, interval)))
    return results


def cumulative_upsampling(key: CurveKey, runs: Sequence[Run], spec: str,
                          values: Sequence[str] | None = None, interval: str = "t") -> list[Curve]:
    """Upsampling ratio of the acquisitions so far, against the labels once they are labelled:
    one curve per value (metric "SPEC=VALUE"; all values, or `values`), mean ± 95 % CI over seeds."""
    check_spec(runs, spec)
    points: dict[str, dict[int, list[float]]] = {}
    for a in _acquisitions(runs, spec):
        so_far = np.cumsum(a.counts, axis=0)
        ratio = so_far / so_far.sum(axis=1, keepdims=True) / a.share
        for value in a.column if values is None else [v for v in values if v in a.column]:
            curve = points.setdefault(value, {})
            for labels, r in zip(a.labels.tolist(), ratio[:, a.column[value]].tolist()):
                curve.setdefault(labels, []).append(r)
    return [Curve.from_points(key, f"{spec}={value}", p, interval) for value, p in points.items()]
