"""Statistics over seeds, as the paper reports them.

* A mean over seeds comes with a 95 % confidence interval from the Gaussian approximation:
  mean ± 1.96 · sd / √n, sd the sample standard deviation (ddof 1). One seed has no interval.
* A difference between two strategies (A − B) is paired when both were run on the same seeds
  (the difference per seed, its mean ± 1.96 · sd / √n, and a paired t-test), and otherwise
  unpaired (Welch: mean_A − mean_B ± 1.96 · √(sd_A²/n_A + sd_B²/n_B), and Welch's t-test).
* Labels-to-reach walks a mean curve and linearly interpolates between the two evaluated rounds
  around the first crossing of the target; a curve that never reaches it gives None: no
  extrapolation beyond the last round.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

#: The 97.5 % quantile of the standard normal, rounded as in the paper's "95 % CI (Gaussian approx.)".
Z95 = 1.96


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean of `n` values; `sd` (ddof 1) and `half_width` (1.96 · sd / √n) are None for one value."""

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


def estimate(values: Sequence[float]) -> Estimate:
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        raise ValueError("an estimate needs at least one value")
    if len(values) == 1:
        return Estimate(float(values[0]), 1, None, None)
    sd = float(values.std(ddof=1))
    return Estimate(float(values.mean()), len(values), sd, Z95 * sd / math.sqrt(len(values)))


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


def difference(a: Sequence[tuple[int, float]], b: Sequence[tuple[int, float]]) -> Difference:
    """A − B from (seed, value) pairs; paired when both sides hold the same seeds, each once."""
    from scipy import stats

    seeds_a, seeds_b = [s for s, _ in a], [s for s, _ in b]
    if not a or not b:
        raise ValueError("a difference needs values on both sides")
    paired = sorted(seeds_a) == sorted(seeds_b) and len(set(seeds_a)) == len(seeds_a) and len(a) >= 2
    if paired:
        va, vb = np.array([v for _, v in sorted(a)]), np.array([v for _, v in sorted(b)])
        diffs = va - vb
        spread = estimate(diffs)
        result = stats.ttest_rel(va, vb) if spread.sd else None
        return Difference(spread.mean, spread.half_width, "paired t", _finite(result.statistic) if result else None,
                          _finite(result.pvalue) if result else None, len(va), len(vb))
    va, vb = np.array([v for _, v in a]), np.array([v for _, v in b])
    mean = float(va.mean() - vb.mean())
    if len(va) < 2 or len(vb) < 2:
        return Difference(mean, None, "Welch t", None, None, len(va), len(vb))
    se = math.sqrt(va.var(ddof=1) / len(va) + vb.var(ddof=1) / len(vb))
    result = stats.ttest_ind(va, vb, equal_var=False) if se > 0 else None
    return Difference(mean, Z95 * se if se > 0 else None, "Welch t", _finite(result.statistic) if result else None,
                      _finite(result.pvalue) if result else None, len(va), len(vb))


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
