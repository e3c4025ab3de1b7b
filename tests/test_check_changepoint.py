"""The e-divisive + t-test change points against the reference implementations' published
expectations on the same series: Hunter/Apache Otava (tests/analysis_test.py,
tests/series_test.py of datastax-labs/hunter) and asv (test/test_step_detect.py)."""
import numpy as np
import pytest

from harness.check.changepoint import change_points, compare, divergence


def test_otava_single_series():
    # hunter tests/analysis_test.py::test_single_series
    series = [1.02, 0.95, 0.99, 1.00, 1.12, 1.00, 1.01, 0.98, 1.01, 0.96,
              0.50, 0.51, 0.48, 0.48, 0.55, 0.50, 0.49, 0.51, 0.50, 0.49]
    assert [c.index for c in change_points(series, window=10, max_pvalue=0.0001)] == [10]


def test_otava_significance_tester():
    # hunter tests/analysis_test.py::test_significance_tester
    same = np.array([1.00, 1.02, 1.05, 0.95, 0.98, 1.00, 1.02, 1.05, 0.95, 0.98])
    assert 0.99 < compare(same[:5], same[5:]).pvalue < 1.01
    step = np.array([1.00, 1.02, 1.05, 0.95, 0.98, 0.80, 0.82, 0.85, 0.79, 0.77])
    assert 0.0 < compare(step[:5], step[5:]).pvalue < 0.001


SERIES_1 = [1.02, 0.95, 0.99, 1.00, 1.12, 0.90, 0.50, 0.51, 0.48, 0.48, 0.55]
SERIES_2 = [2.02, 2.03, 2.01, 2.04, 1.82, 1.85, 1.79, 1.81, 1.80, 1.76, 1.78]


def test_otava_change_point_detection():
    # hunter tests/series_test.py::test_change_point_detection (defaults: window 50, p 0.001)
    assert [c.index for c in change_points(SERIES_1)] == [6]
    assert [c.index for c in change_points(SERIES_2)] == [4]


def test_otava_min_magnitude():
    # hunter tests/series_test.py::test_change_point_min_magnitude (min_magnitude 0.2)
    found = change_points(SERIES_1, min_magnitude=0.2)
    assert [c.index for c in found] == [6] and all(c.magnitude >= 0.2 for c in found)
    assert change_points(SERIES_2, min_magnitude=0.2) == []


def test_asv_steps_found():
    # asv test/test_step_detect.py::test_solve_potts "bigger case": steps at 5, 10, 20, 50, 70
    np.random.seed(1234)
    t = np.arange(100)
    y0 = +0.4 * (t >= 5) + 0.9 * (t >= 10) - 0.2 * (t >= 20) + 0.2 * (t >= 50) + 1.1 * (t >= 70)
    y = y0 + 0.05 * np.random.rand(y0.size) + 1.0  # +1: relative magnitudes need a positive level
    assert [c.index for c in change_points(y)] == [5, 10, 20, 50, 70]


def test_asv_zero_variance_and_short_series():
    # asv test/test_step_detect.py::test_zero_variance: a constant series has no step
    assert change_points([1.0] * 1000, window=50) == []
    assert change_points([1.0, 2.0]) == []


def test_divergence_peaks_at_the_step():
    values = np.array([1.0] * 6 + [2.0] * 4)
    stats = divergence(values)
    assert stats[0] == 0 and int(np.argmax(stats)) == 6


def test_rejects_missing_values():
    with pytest.raises(ValueError):
        change_points([1.0, float("nan"), 1.0, 1.0])
