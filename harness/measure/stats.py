"""Latency statistics in the style of pyperf: robust centre, spread and tails."""
from __future__ import annotations

import math
import statistics

CV_WARN_DEFAULT = 0.10


def summarize(samples_ms: list[float], batch: int, cv_warn: float = CV_WARN_DEFAULT) -> dict:
    """Median, percentiles, MAD and throughput of latency samples (ms per batch).

    The coefficient of variation (std / mean) flags unstable measurements: a
    busy host, thermal throttling or unlocked clocks; the summary carries a
    warning then, instead of a misleadingly precise median.
    """
    if not samples_ms:
        raise ValueError("no latency samples")
    xs = sorted(samples_ms)
    median = statistics.median(xs)
    mean = statistics.fmean(xs)
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    mad = statistics.median(abs(x - median) for x in xs)
    cv = std / mean if mean > 0 else 0.0
    out = {
        "n": len(xs), "median_ms": median, "mean_ms": mean, "std_ms": std, "mad_ms": mad,
        "min_ms": xs[0], "max_ms": xs[-1], "p90_ms": percentile(xs, 90),
        "p95_ms": percentile(xs, 95), "p99_ms": percentile(xs, 99), "cv": cv,
        "throughput_ips": batch * 1000.0 / median if median > 0 else math.inf,
        "batch": batch,
    }
    out["unstable"] = cv > cv_warn
    return out


def percentile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of sorted values."""
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = (len(sorted_xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)
