"""Statistics over seeds.

* A mean over seeds comes with a 95 % confidence interval. By default it is Student's t interval
  (mean ± t(0.975, n − 1) · sd / √n, sd with ddof 1), which is right for the handful of seeds AL
  studies run; `interval="gaussian"` gives the paper's "95 % CI (Gaussian approx.)", mean ± z · sd
  / √n, to redraw its figures. One seed has no interval. scipy computes both.
* A difference between two strategies (A − B) is paired when both were run on the same seeds:
  the per-seed differences, their interval as above, and a paired t-test (scipy's `ttest_rel`,
  whose confidence interval is the t interval). Otherwise it is unpaired: Welch's t-test (scipy's
  `ttest_ind(equal_var=False)`) with its Welch–Satterthwaite interval, or the Gaussian one. So the
  interval and the p-value of one comparison always tell the same story.
* Labels-to-reach is "reach and stay": see `labels_to_reach`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

#: Interval kinds: "t" (default) or "gaussian" (the paper's figures).
INTERVALS = ("t", "gaussian")
CONFIDENCE = 0.95
#: How each interval kind is described in reports.
INTERVAL_TEXT = {
    "t": "Student t interval: t(0.975, seeds − 1) · sd / √seeds (Welch–Satterthwaite for unpaired differences)",
    "gaussian": "Gaussian approximation, as the paper: 1.96 · sd / √seeds",
}


def check_interval(interval: str) -> str:
    if interval not in INTERVALS:
        from embedcache.errors import ConfigError

        raise ConfigError(f"unknown confidence interval {interval!r}; choose one of {list(INTERVALS)}")
    return interval


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _half_width(scale: float, df: float, interval: str) -> float:
    """Half the width of the 95 % interval of an estimate with standard error `scale`."""
    from scipy import stats

    if scale == 0:
        return 0.0
    if interval == "gaussian":
        low, high = stats.norm.interval(CONFIDENCE, loc=0.0, scale=scale)
    else:
        low, high = stats.t.interval(CONFIDENCE, df, loc=0.0, scale=scale)
    return float(high - low) / 2


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean of `n` values; `sd` (ddof 1) and `half_width` (of the 95 % interval) are None for one value."""

    mean: float
    n: int
    sd: float | None
    half_width: float | None

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def to_dict(self) -> dict:
        return {"mean": self.mean, "n": self.n, "sd": self.sd, "ci_low": self.low, "ci_high": self.high}


def estimate(values: Sequence[float], interval: str = "t") -> Estimate:
    """Mean of `values` with its 95 % interval of kind `interval` (see the module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        raise ValueError("an estimate needs at least one value")
    if len(values) == 1:
        return Estimate(float(values[0]), 1, None, None)
    sd = float(values.std(ddof=1))
    half = _half_width(sd / math.sqrt(len(values)), len(values) - 1, check_interval(interval))
    return Estimate(float(values.mean()), len(values), sd, half)


@dataclasses.dataclass(frozen=True)
class Difference:
    """A − B over seeds: the mean difference, its 95 % CI half-width, and a two-sided t-test.

    `test` is "paired t" (same seeds on both sides) or "Welch t"; statistic, p_value and
    half_width are None when there are too few seeds (or no spread) to compute them."""

    mean: float
    half_width: float | None
    test: str
    statistic: float | None
    p_value: float | None
    n_a: int
    n_b: int

    def to_dict(self) -> dict:
        low = None if self.half_width is None else self.mean - self.half_width
        high = None if self.half_width is None else self.mean + self.half_width
        return {"mean": self.mean, "ci_low": low, "ci_high": high, "test": self.test, "statistic": self.statistic,
                "p_value": self.p_value, "n_a": self.n_a, "n_b": self.n_b}


def difference(a: Sequence[tuple[int, float]], b: Sequence[tuple[int, float]], interval: str = "t") -> Difference:
    """A − B from (seed, value) pairs; paired when both sides hold the same seeds, each once."""
    from scipy import stats

    check_interval(interval)
    seeds_a, seeds_b = [s for s, _ in a], [s for s, _ in b]
    if not a or not b:
        raise ValueError("a difference needs values on both sides")
    paired = sorted(seeds_a) == sorted(seeds_b) and len(set(seeds_a)) == len(seeds_a) and len(a) >= 2
    if paired:
        va, vb = np.array([v for _, v in sorted(a)]), np.array([v for _, v in sorted(b)])
        spread = estimate(va - vb, interval)
        result = stats.ttest_rel(va, vb) if spread.sd else None
        return Difference(spread.mean, spread.half_width, "paired t", _finite(result.statistic) if result else None,
                          _finite(result.pvalue) if result else None, len(va), len(vb))
    va, vb = np.array([v for _, v in a]), np.array([v for _, v in b])
    mean = float(va.mean() - vb.mean())
    if len(va) < 2 or len(vb) < 2:
        return Difference(mean, None, "Welch t", None, None, len(va), len(vb))
    se = math.sqrt(va.var(ddof=1) / len(va) + vb.var(ddof=1) / len(vb))
    if se == 0:
        return Difference(mean, None, "Welch t", None, None, len(va), len(vb))
    result = stats.ttest_ind(va, vb, equal_var=False)
    if interval == "t":
        low, high = result.confidence_interval(CONFIDENCE)
        half = float(high - low) / 2
    else:
        half = _half_width(se, math.inf, interval)
    return Difference(mean, half, "Welch t", _finite(result.statistic), _finite(result.pvalue), len(va), len(vb))


def labels_to_reach(n_labeled: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """Labels from which a curve reaches `target` and stays there: the crossing after its last point
    below the target, linearly interpolated between the two rounds around it; the first point if
    the curve never falls below; None if it ends below. (A first crossing would let a noisy curve
    near a flat baseline "reach" it by chance and claim a large saving.)"""
    x, y = np.asarray(n_labeled, dtype=np.float64), np.asarray(values, dtype=np.float64)
    below = np.flatnonzero(y < target)
    if not len(below):
        return float(x[0])
    i = int(below[-1]) + 1
    if i == len(y):
        return None
    return float(x[i - 1] + (target - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))
