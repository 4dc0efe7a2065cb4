"""Small statistics for convergence benchmarks: iterations to a fixed quality, t-intervals, paired differences.

Used by ``seed004_convergence.py``; kept apart so that the maths has its own fast tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def iterations_to_threshold(curve: Sequence[dict], threshold: float, key: str = "fd") -> int | None:
    """The first ``iteration`` of ``curve`` (points in training order) with ``key`` <= ``threshold``, else None."""
    return next((point["iteration"] for point in curve if point[key] <= threshold), None)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean of ``values`` (n − 1 degrees of freedom).

    One value gives (value, nan, nan): no spread is identifiable from it.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    n = len(values)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, math.nan
    from scipy.stats import t as student_t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = student_t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_difference(a: dict[int, float | None], b: dict[int, float | None],
                      confidence: float = 0.95) -> dict:
    """The t-interval of a − b over the keys (seeds) where both are known; counts the seeds left out.

    ``a`` and ``b`` map a seed to a measurement, None where it is missing (e.g. the threshold was not
    reached): pairing on the same seed removes what the seeds share (data order, initialisation).
    """
    seeds = sorted(seed for seed in a.keys() & b.keys() if a[seed] is not None and b[seed] is not None)
    differences = [a[seed] - b[seed] for seed in seeds]
    mean, low, high = t_interval(differences, confidence) if differences else (math.nan, math.nan, math.nan)
    return {"seeds": seeds, "differences": differences, "mean": mean, "low": low, "high": high,
            "left_out": len(a.keys() | b.keys()) - len(seeds)}


def mean_curve_with_interval(curves: Sequence[Sequence[dict]], key: str = "fd",
                             confidence: float = 0.95) -> list[dict]:
    """Per iteration: the mean of ``key`` over the curves that have that iteration, its t-interval and count.

    Curves may stop at different iterations (a run ends once it reaches its threshold); each point
    averages only the runs still going, and says how many (``n``).
    """
    by_iteration: dict[int, list[float]] = {}
    for curve in curves:
        for point in curve:
            by_iteration.setdefault(point["iteration"], []).append(point[key])
    points = []
    for iteration in sorted(by_iteration):
        mean, low, high = t_interval(by_iteration[iteration], confidence)
        points.append({"iteration": iteration, "mean": mean, "low": low, "high": high,
                       "n": len(by_iteration[iteration])})
    return points
