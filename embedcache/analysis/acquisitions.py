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
from embedcache.records import Run


def recorded_columns(run: Run) -> list[str]:
    """Columns whose value the record keeps for every acquisition (the label and each group)."""
    return list(run.header.get("seed_groups") or {})


def acquisition_specs(runs: Sequence[Run]) -> list[str]:
    """Specs every run can be analysed on: each recorded column, each spec with pool counts over
    recorded columns, and label*column for each group column."""
    per_run = []
    for run in runs:
        columns = recorded_columns(run)
        specs = dict.fromkeys(columns)
        specs.update(dict.fromkeys(s for s in run.header.get("pool_counts", {})
                                   if all(c in columns for c in s.split(COMBINE))))
        specs.update(dict.fromkeys(f"{LABEL}{COMBINE}{c}" for c in columns if c != LABEL and LABEL in columns))
        per_run.append(specs)
    return [s for s in per_run[0] if all(s in specs for specs in per_run)] if per_run else []


def check_spec(runs: Sequence[Run], spec: str) -> None:
    """ConfigError naming the recorded columns unless every run records every column of `spec`."""
    for run in runs:
        columns = recorded_columns(run)
        missing = [c for c in spec.split(COMBINE) if c not in columns]
        if missing:
            raise ConfigError(f"unknown group {missing[0]!r} in {spec!r}: {run.path} records the columns "
                              f"{columns} (combine them with '*', e.g. {LABEL}{COMBINE}{columns[-1]})")


def _values(groups: dict[str, list[str]], spec: str) -> list[str]:
    columns = [groups[c] for c in spec.split(COMBINE)]
    return [COMBINE.join(v) for v in zip(*columns)]


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
    recorded = run.header.get("pool_counts", {}).get(spec)
    if recorded is not None:
        return recorded
    cache = run.header.get("source", {}).get("cache")
    if not cache or not Path(cache).is_file():
        raise ConfigError(f"{run.path} records no pool counts for {spec!r} and its cache ({cache}) is not there to "
                          f"count them; it has: {sorted(run.header.get('pool_counts', {}))}")
    return _cache_pool_counts(cache, run.fingerprint, run.header["protocol"]["pool_split"], spec)


def _acquired(run: Run, spec: str) -> list[list[str]]:
    """The values of `spec` acquired in each round."""
    return [_values(r["acquired"]["groups"], spec) if r["acquired"]["ids"] else [] for r in run.rounds]


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
        return {"backbone": self.key.backbone, "strategy": self.key.strategy, "group": self.spec,
                "value": self.value, "pool_share": self.pool_share.mean,
                "acquired_share": self.acquired_share.to_dict(), "ratio": self.ratio.to_dict()}

    def row(self) -> dict:
        """A flat dict for CSV tables."""
        r = self.ratio
        return {"backbone": self.key.backbone, "strategy": self.key.strategy, "group": self.spec, "value": self.value,
                "pool_share": self.pool_share.mean, "acquired_share": self.acquired_share.mean, "ratio": r.mean,
                "ratio_sd": r.sd, "ci_low": r.low, "ci_high": r.high, "n_seeds": r.n}


def _shares(runs: Sequence[Run], spec: str) -> list[tuple[Run, dict[str, float], list[list[str]]]]:
    """Per run with acquisitions: (run, pool share per value, acquired values per round)."""
    result = []
    for run in runs:
        acquired = _acquired(run, spec)
        if any(acquired):
            counts = pool_counts(run, spec)
            total = sum(counts.values())
            result.append((run, {v: c / total for v, c in counts.items()}, acquired))
    return result


def upsampling(key: CurveKey, runs: Sequence[Run], spec: str) -> list[Upsampling]:
    """Upsampling ratio of every value of `spec` in the pool (values in pool order); [] if nothing was acquired."""
    check_spec(runs, spec)
    per_run = _shares(runs, spec)
    values = list(dict.fromkeys(v for _, shares, _ in per_run for v in shares))
    results = []
    for value in values:
        pool, acquired, ratio = [], [], []
        for _, shares, rounds in per_run:
            flat = [v for batch in rounds for v in batch]
            share = flat.count(value) / len(flat)
            pool.append(shares.get(value, 0.0))
            acquired.append(share)
            if pool[-1] > 0:
                ratio.append(share / pool[-1])
        if ratio:
            results.append(Upsampling(key, spec, value, estimate(pool), estimate(acquired), estimate(ratio)))
    return results


def cumulative_upsampling(key: CurveKey, runs: Sequence[Run], spec: str) -> list[Curve]:
    """Upsampling ratio of the acquisitions so far, against the labels once they are labelled:
    one curve per value (metric "SPEC=VALUE"), mean ± 95 % CI over seeds."""
    check_spec(runs, spec)
    points: dict[str, dict[int, list[float]]] = {}
    for run, shares, rounds in _shares(runs, spec):
        so_far: list[str] = []
        for r, batch in zip(run.rounds, rounds):
            if not batch:
                continue
            so_far += batch
            labels = int(r["n_labeled"]) + len(batch)
            for value, share in shares.items():
                points.setdefault(value, {}).setdefault(labels, []).append(so_far.count(value) / len(so_far) / share)
    return [Curve.from_points(key, f"{spec}={value}", p) for value, p in points.items()]
