"""benchmarks/convergence_stats.py: iterations to a threshold, Student-t intervals and paired differences."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from convergence_stats import (  # noqa: E402
    iterations_to_threshold,
    mean_curve_with_interval,
    paired_difference,
    t_interval,
)


def test_iterations_to_threshold_is_the_first_crossing_not_the_last():
    curve = [{"iteration": 100, "fd": 90.0}, {"iteration": 200, "fd": 40.0}, {"iteration": 300, "fd": 60.0},
             {"iteration": 400, "fd": 30.0}]
    assert iterations_to_threshold(curve, 50.0) == 200
    assert iterations_to_threshold(curve, 40.0) == 200  # "at or below"
    assert iterations_to_threshold(curve, 35.0) == 400
    assert iterations_to_threshold(curve, 10.0) is None


def test_t_interval_matches_the_textbook_formula():
    values = [2.0, 4.0, 6.0, 8.0, 10.0]  # mean 6, sd sqrt(10)
    mean, low, high = t_interval(values)
    half = 2.7764451051977987 * math.sqrt(10) / math.sqrt(5)  # t_{0.975, 4}
    assert mean == 6.0
    assert low == pytest.approx(6.0 - half, rel=1e-9) and high == pytest.approx(6.0 + half, rel=1e-9)
    # a wider confidence gives a wider interval; one value gives no interval
    assert t_interval(values, 0.99)[2] > high
    assert t_interval([3.0])[0] == 3.0 and math.isnan(t_interval([3.0])[1])
    with pytest.raises(ValueError, match="confidence"):
        t_interval(values, 1.0)


def test_t_interval_covers_the_mean_at_its_nominal_rate():
    import random

    rng, covered, trials = random.Random(0), 0, 2000
    for _ in range(trials):
        _, low, high = t_interval([rng.gauss(1.0, 3.0) for _ in range(5)])
        covered += low <= 1.0 <= high
    assert abs(covered / trials - 0.95) < 0.015


def test_paired_difference_pairs_by_seed_and_leaves_out_missing():
    a = {0: 1000, 1: 1200, 2: None, 3: 900}
    b = {0: 1100, 1: 1500, 2: 800, 3: 1000}
    result = paired_difference(a, b)
    assert result["seeds"] == [0, 1, 3] and result["differences"] == [-100, -300, -100]
    assert result["left_out"] == 1
    mean, low, high = t_interval([-100, -300, -100])
    assert (result["mean"], result["low"], result["high"]) == (mean, low, high)
    # pairing removes a shared per-seed offset that an unpaired comparison would count as noise
    shifted = paired_difference({s: 100 * s + 10 for s in range(5)}, {s: 100 * s for s in range(5)})
    assert shifted["mean"] == 10 and shifted["low"] == shifted["high"] == 10


def test_mean_curve_averages_only_the_runs_still_going():
    curves = [[{"iteration": 100, "fd": 10.0}, {"iteration": 200, "fd": 6.0}],
              [{"iteration": 100, "fd": 20.0}]]
    points = mean_curve_with_interval(curves)
    assert [(p["iteration"], p["mean"], p["n"]) for p in points] == [(100, 15.0, 2), (200, 6.0, 1)]
    assert points[0]["low"] < 15.0 < points[0]["high"] and math.isnan(points[1]["low"])
