"""Night verdicts over one series' history: pure functions of numbers, shared by
``detbench check`` and ``benchmarks/check_detector.py``.

Latency (one value per run: the median of its raw samples, with the median's
standard error).  A run is *bad* when, against the level of its baseline,

- it is slower by more than ``z`` standard errors, the error combining the
  run-to-run spread of the baseline (robust: 1.4826 x MAD of each segment's values
  around its median) with the run's own sampling error; and
- the change could be at least ``min_magnitude``: change + z x error >= min_magnitude
  (a change is dismissed as too small only when it is known to be smaller).

The baseline of the last k runs is the last stable segment (Otava-style e-divisive
change points, :mod:`harness.check.changepoint`) of up to ``history`` runs before
them.  The verdict is the longest k such that the last k runs are all bad against
the runs before them: k = 0 ok, k < ``confirm`` suspect, k >= ``confirm``
confirmed (so a regression stays confirmed night after night until it is fixed or
acknowledged).  Fewer than ``min_history`` baseline runs: insufficient data.

Accuracy (AP, AP50, matched %): a run is bad when it is more than ``tolerance``
below the median of its baseline runs; same confirmation rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from harness.check.changepoint import change_points
from harness.check.stats import MAD_TO_SIGMA, MEDIAN_SE

OK, SUSPECT, CONFIRMED, INSUFFICIENT, IMPROVED = (
    "ok", "suspect", "confirmed", "insufficient data", "improved")
#: relative spread below which a series counts as noiseless (clock resolution, rounding)
SPREAD_FLOOR = 0.001
#: change points of the baseline are searched at this p-value (Otava's default)
CP_PVALUE = 0.001


@dataclass(frozen=True)
class Rule:
    min_magnitude: float = 0.05
    z: float = 3.0
    history: int = 30
    min_history: int = 5
    confirm: int = 2


@dataclass(frozen=True)
class Verdict:
    """``bad_runs``: how many of the last runs are bad; ``first_bad``: index of the first of
    them in the input; ``change``: relative change of the newest value against ``baseline``
    (negative = lower); ``pvalue``: one-sided, of the newest value given the baseline."""

    state: str
    bad_runs: int = 0
    first_bad: int | None = None
    baseline: float | None = None
    change: float | None = None
    pvalue: float | None = None
    baseline_runs: int = 0
    change_points: list[int] = field(default_factory=list)


def _segments_start(values: np.ndarray, rule: Rule) -> tuple[int, list[int]]:
    """Index where the last stable segment starts, and all change points found."""
    if len(values) < 4:
        return 0, []
    cps = change_points(values, max_pvalue=CP_PVALUE, min_magnitude=rule.min_magnitude / 2)
    return (cps[-1].index if cps else 0), [c.index for c in cps]


def _spread(values: np.ndarray, starts: list[int]) -> float:
    """Robust relative run-to-run spread, pooled over the segments between change points."""
    ends = [0, *starts, len(values)]
    residuals = []
    for a, b in zip(ends, ends[1:]):
        segment = values[a:b]
        if len(segment) >= 2:
            level = np.median(segment)
            residuals.append(segment / level - 1.0)
    if not residuals:
        return 0.0
    pooled = np.concatenate(residuals)
    # MAD of a handful of values is biased low: scale by the small-sample correction
    size = len(pooled)
    correction = size / (size - 0.8) if size > 1 else 1.0
    return MAD_TO_SIGMA * float(np.median(np.abs(pooled))) * correction


@dataclass(frozen=True)
class _Baseline:
    level: float
    spread: float
    runs: int
    change_points: list[int]


def _latency_baseline(values: np.ndarray, rel_se: np.ndarray, rule: Rule) -> _Baseline | None:
    window = values[-rule.history:]
    offset = len(values) - len(window)
    if len(window) < rule.min_history:
        return None
    start, cps = _segments_start(window, rule)
    level = float(np.median(window[start:]))
    spread = max(_spread(window, cps), float(np.median(rel_se[offset:])), SPREAD_FLOOR)
    runs = len(window) - start
    return _Baseline(level, spread * np.sqrt(1 + MEDIAN_SE ** 2 / runs), runs,
                     [offset + c for c in cps])


def _latency_bad(value: float, rel_se: float, base: _Baseline, rule: Rule) -> tuple[bool, float, float]:
    change = value / base.level - 1.0
    error = float(np.hypot(base.spread, rel_se))
    bad = change > rule.z * error and change + rule.z * error >= rule.min_magnitude
    return bad, change, error


def latency_verdict(values: Sequence[float], rel_se: Sequence[float] | None = None,
                    rule: Rule = Rule()) -> Verdict:
    """Verdict for the newest of ``values`` (latency medians, oldest first, no gaps)."""
    from scipy.stats import norm

    v = np.asarray(values, dtype=float)
    se = np.zeros_like(v) if rel_se is None else np.asarray(rel_se, dtype=float)
    newest = _latency_baseline(v[:-1], se[:-1], rule) if len(v) > 1 else None
    if newest is None:
        return Verdict(INSUFFICIENT, baseline_runs=max(len(v) - 1, 0))
    bad_now, change, error = _latency_bad(v[-1], se[-1], newest, rule)
    bad_runs, first, shown = (1, len(v) - 1, newest) if bad_now else (0, None, newest)
    # a step up inside the baseline may be the start of this regression: test from there too
    steps_up = [c for c in newest.change_points if v[c:-1].mean() > v[:c][-rule.history:].mean()]
    candidates = range(2, rule.confirm + 2)  # the newest baseline may have split off its tail
    for k in sorted({*candidates, *(len(v) - c for c in steps_up)}):
        base = _latency_baseline(v[:-k], se[:-k], rule)
        if base is not None and k > bad_runs and all(
                _latency_bad(v[i], se[i], base, rule)[0] for i in range(len(v) - k, len(v))):
            bad_runs, first, shown = k, len(v) - k, base
    if shown is not newest:  # describe the newest run against the baseline that confirms
        _, change, error = _latency_bad(v[-1], se[-1], shown, rule)
    pvalue = float(norm.sf(change / error))
    state = _state(bad_runs, rule)
    if state == OK and -change > rule.z * error and -change + rule.z * error >= rule.min_magnitude:
        state = IMPROVED
    return Verdict(state, bad_runs, first, shown.level, float(change), pvalue, shown.runs,
                   newest.change_points)


def accuracy_verdict(values: Sequence[float], tolerance: float, rule: Rule = Rule()) -> Verdict:
    """Verdict for the newest of ``values`` (AP-like: higher is better; oldest first).

    Accuracy on a fixed dataset is deterministic up to GPU non-determinism, so one
    earlier run is enough history."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return Verdict(INSUFFICIENT, baseline_runs=max(len(v) - 1, 0))
    bad_runs, first, newest = 0, None, None
    eps = 1e-9  # a drop of exactly the tolerance is within it despite float rounding
    for k in range(1, len(v)):
        base = v[:-k][-rule.history:]
        level = float(np.median(base))
        bad = [level - x > tolerance + eps for x in v[-k:]]
        if k == 1:
            newest = (level, len(base))
        if all(bad):
            bad_runs, first = k, len(v) - k
        elif k == 1:
            break
    level, runs = newest
    change = float(v[-1] - level)
    state = _state(bad_runs, rule)
    if state == OK and change > tolerance + eps:
        state = IMPROVED
    return Verdict(state, bad_runs, first, level, change, None, runs)


def _state(bad_runs: int, rule: Rule) -> str:
    if bad_runs >= rule.confirm:
        return CONFIRMED
    return SUSPECT if bad_runs else OK
