"""Change points in a short series: e-divisive means with a Student's t-test.

The method of Apache Otava (formerly Hunter, ``otava.analysis.compute_change_points``),
written here from its description because the package pulls cloud SDKs and pins numpy:

1. *split*: slide windows of ``window`` points (half-overlapping) over the series; in
   each, e-divisive means (Matteson & James 2014, energy distance with exponent 1)
   proposes the split that maximises the divergence between the two sides, and a
   two-sided Student's t-test between the points on either side (bounded by the
   neighbouring change points) keeps it if p <= 10 x ``max_pvalue``; repeat inside
   the pieces until nothing significant is left.
2. *merge*: drop the weakest change point (largest p-value above ``max_pvalue``, else
   the smallest relative change below ``min_magnitude``), re-test its neighbours on
   the widened windows, until every change point passes both.

``tests/test_check_changepoint.py`` reproduces the reference implementation's
published test expectations on the same series.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ChangePoint:
    """A change before point ``index`` (the first point of the new level)."""

    index: int
    mean_before: float
    mean_after: float
    std_before: float
    std_after: float
    pvalue: float

    @property
    def rel_change(self) -> float:
        """after / before - 1 (positive: the values went up)."""
        return self.mean_after / self.mean_before - 1.0 if self.mean_before else float("inf")

    @property
    def magnitude(self) -> float:
        """The larger of the forward and backward relative change, as Otava measures it."""
        if not self.mean_before or not self.mean_after:
            return float("inf")
        return max(abs(self.mean_after / self.mean_before - 1.0),
                   abs(self.mean_before / self.mean_after - 1.0))


def compare(left: np.ndarray, right: np.ndarray, index: int = 0) -> ChangePoint:
    """Student's t-test (pooled variance, population std as the reference does) of two sides."""
    from scipy.stats import ttest_ind_from_stats

    if len(left) == 0 or len(right) == 0:
        raise ValueError("both sides of a change point need points")
    mean_l, mean_r = float(np.mean(left)), float(np.mean(right))
    std_l = float(np.std(left)) if len(left) >= 2 else 0.0
    std_r = float(np.std(right)) if len(right) >= 2 else 0.0
    pvalue = 1.0
    if len(left) + len(right) > 2:
        if std_l == 0.0 and std_r == 0.0:
            pvalue = 1.0 if mean_l == mean_r else 0.0
        else:
            pvalue = float(ttest_ind_from_stats(mean_l, std_l, len(left), mean_r, std_r,
                                                len(right)).pvalue)
    return ChangePoint(index, mean_l, mean_r, std_l, std_r, pvalue)


def divergence(values: np.ndarray) -> np.ndarray:
    """e-divisive's statistic for every split tau of ``values`` (0 where a side is empty).

    Q(tau) = n m / (n + m) * (2 E|X - Y| - E|X - X'| - E|Y - Y'|), X = values[:tau],
    Y = values[tau:], with the averages over all n^2 / m^2 / n m ordered pairs.
    """
    n_all = len(values)
    dist = np.abs(values[:, None] - values[None, :])
    prefix = np.zeros((n_all + 1, n_all + 1))
    prefix[1:, 1:] = dist.cumsum(0).cumsum(1)
    tau = np.arange(1, n_all)
    within_x = prefix[tau, tau]
    within_y = prefix[n_all, n_all] - prefix[tau, n_all] - prefix[n_all, tau] + prefix[tau, tau]
    between = prefix[tau, n_all] - prefix[tau, tau]
    n, m = tau.astype(float), (n_all - tau).astype(float)
    energy = 2 * between / (n * m) - within_x / n ** 2 - within_y / m ** 2
    out = np.zeros(n_all)
    out[1:] = n * m / (n + m) * energy
    return out


def _bounds(index: int, points: Sequence[int], length: int) -> tuple[int, int]:
    ends = [0, *sorted(points), length]
    start = max(p for p in ends if p < index)
    end = min(p for p in ends if p > index)
    return start, end


def _tested(series: np.ndarray, index: int, points: Sequence[int]) -> ChangePoint:
    start, end = _bounds(index, [p for p in points if p != index], len(series))
    return compare(series[start:index], series[index:end], index)


def _edivisive(series: np.ndarray, max_pvalue: float) -> list[int]:
    """Top-down e-divisive on one window: keep splitting while the best split is significant."""
    points: list[int] = []
    while True:
        ends = [0, *sorted(points), len(series)]
        best: tuple[float, int] | None = None
        for a, b in zip(ends, ends[1:]):
            if b - a < 2:
                continue
            stats = divergence(series[a:b])
            tau = int(np.argmax(stats))
            if tau > 0 and (best is None or stats[tau] > best[0]):
                best = (float(stats[tau]), a + tau)
        if best is None or _tested(series, best[1], points + [best[1]]).pvalue > max_pvalue:
            return sorted(points)
        points.append(best[1])


def split(series: np.ndarray, window: int, max_pvalue: float) -> list[int]:
    """Candidate change points from half-overlapping windows of ``window`` points."""
    start, step, found = 0, max(window // 2, 1), []
    while start < len(series):
        end = min(start + window, len(series))
        new = [start + p for p in _edivisive(series[start:end], max_pvalue)]
        found += new
        start = max(max(new, default=0), start + step)
    return sorted(set(found))


def merge(series: np.ndarray, points: list[int], max_pvalue: float,
          min_magnitude: float) -> list[ChangePoint]:
    """Drop the weakest change point until all pass the p-value and magnitude thresholds."""
    cps = [_tested(series, p, points) for p in points]
    while cps:
        weakest = max(cps, key=lambda c: c.pvalue)
        if weakest.pvalue < max_pvalue:
            weakest = min(cps, key=lambda c: c.magnitude)
            if weakest.magnitude > min_magnitude:
                return cps
        position = cps.index(weakest)
        del cps[position]
        kept = [c.index for c in cps]
        for i in (position - 1, position):
            if 0 <= i < len(cps):
                cps[i] = _tested(series, cps[i].index, kept)
    return cps


def change_points(values: Sequence[float], *, window: int = 50, max_pvalue: float = 0.001,
                  min_magnitude: float = 0.0) -> list[ChangePoint]:
    """Otava-style change points of ``values`` (no missing values), first index first."""
    series = np.asarray(values, dtype=float)
    if series.ndim != 1 or not np.all(np.isfinite(series)):
        raise ValueError("change points need a 1-D series of finite numbers")
    if len(series) < 3:
        return []
    return merge(series, split(series, window, max_pvalue * 10), max_pvalue, min_magnitude)
