"""Two-run statistics on raw latency samples: Mann-Whitney U and a bootstrap CI of the
ratio of medians; and the per-run summary the history test needs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: 1.4826 * MAD estimates a normal sigma; the median's standard error is ~1.2533 sigma / sqrt(n)
MAD_TO_SIGMA = 1.4826
MEDIAN_SE = 1.2533


@dataclass(frozen=True)
class NightSummary:
    """One run of a series: its median and the median's relative standard error."""

    median: float
    rel_se: float
    n: int


def summarise(samples: Sequence[float]) -> NightSummary | None:
    """None when there are no usable samples (a corrupted run)."""
    values = np.asarray(samples, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    median = float(np.median(values))
    if median <= 0:
        return None
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    return NightSummary(median, MEDIAN_SE * sigma / np.sqrt(values.size) / median, int(values.size))


@dataclass(frozen=True)
class TwoRunTest:
    """``after`` vs ``before``: ratio of medians with its bootstrap CI, and the U test's p."""

    ratio: float
    ci_low: float
    ci_high: float
    pvalue: float

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "pvalue": self.pvalue}


def two_run_test(before: Sequence[float], after: Sequence[float], *, confidence: float = 0.99,
                 resamples: int = 2000, seed: int = 0) -> TwoRunTest | None:
    """Mann-Whitney U (two-sided) on the raw samples and a percentile bootstrap CI of
    median(after) / median(before); None when a side has fewer than 2 samples."""
    from scipy.stats import mannwhitneyu

    x, y = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if x.size < 2 or y.size < 2:
        return None
    rng = np.random.default_rng(seed)
    bx = np.median(rng.choice(x, (resamples, x.size)), axis=1)
    by = np.median(rng.choice(y, (resamples, y.size)), axis=1)
    ratios = by / bx
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    pvalue = float(mannwhitneyu(y, x, alternative="two-sided").pvalue)
    return TwoRunTest(float(np.median(y) / np.median(x)), float(low), float(high), pvalue)
