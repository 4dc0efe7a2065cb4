"""Pieces shared by the native backend's adaptive and fixed-grid Runge-Kutta loops.

Stage combinations are chains of ``Tensor.add_(k, alpha=...)`` with the zero weights skipped: on small
states one ``add_`` costs a fraction of a matrix-vector product (which torchdiffeq uses), and the chain
works unchanged under autograd.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import NonFiniteStateError
from ..stats import SolveStats
from ..validation import all_finite
from .base import RHS

__all__ = ["RHSCaller", "matched_to_state", "combine", "add_increment", "weighted_sum", "nonzero",
           "check_derivative", "partial_t", "output_times"]


def combine(y: torch.Tensor, ks: Sequence[torch.Tensor], weights, h: float) -> torch.Tensor:
    """y + h * sum_j w_j k_j over the nonzero (j, w_j) pairs, as one out-of-place add then in-place adds."""
    (j, w), *rest = weights
    out = y.add(ks[j], alpha=h * w)
    for j, w in rest:
        out.add_(ks[j], alpha=h * w)
    return out


def add_increment(y: torch.Tensor, ks: Sequence[torch.Tensor], weights, h: float) -> torch.Tensor:
    """y + h * sum_j w_j k_j with the increment summed first (in units of the first weight) and added to y
    once, as torchdiffeq's fixed-grid steps form ``y0 + dy``: y is rounded once per step instead of once
    per weight. Without error control that matters: on a fixed grid in float32 the per-weight roundings
    of y add up to many ulps (1e-4 relative after 150 rk4 steps of torchdiffeq's ``constant`` problem).
    The op count is the number of nonzero weights, as ``combine``'s."""
    if len(weights) == 1:
        return combine(y, ks, weights, h)
    return y.add(weighted_sum(ks, weights), alpha=h * weights[0][1])


def weighted_sum(ks: Sequence[torch.Tensor], weights) -> torch.Tensor:
    """sum_j (w_j / w_first) k_j over two or more nonzero (j, w_j) pairs: the sum in units of its first
    weight, which the caller applies with the step size in one op (no op of its own for scaling)."""
    (j, first), (k, w), *rest = weights
    out = ks[j].add(ks[k], alpha=w / first)
    for k, w in rest:
        out.add_(ks[k], alpha=w / first)
    return out


def nonzero(weights: Sequence[float]) -> tuple[tuple[int, float], ...]:
    return tuple((j, w) for j, w in enumerate(weights) if w != 0)


class _CastToStateDtype:
    """func with its output cast to the state's dtype: torchdiffeq's result for a func whose dy/dt comes
    back in another floating dtype (a float64 constant promoting a float32 state, say)."""

    def __init__(self, func: RHS, dtype: torch.dtype):
        self.func, self.dtype = func, dtype

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.func(t, y).to(self.dtype)


def matched_to_state(func: RHS, out, dtype: torch.dtype) -> tuple[RHS, object]:
    """After func's first evaluation: the callable to use for the rest of the solve, and ``out`` in the
    state's ``dtype``. When the dtypes agree that is func itself, so the check costs nothing per step; a
    non-floating dy/dt (integer, bool, complex) is refused, naming both dtypes."""
    if not isinstance(out, torch.Tensor) or out.dtype == dtype:
        return func, out  # a non-tensor is check_derivative's to report
    if not out.is_floating_point():
        raise TypeError(f"func returned dy/dt of dtype {out.dtype} for a state y of dtype {dtype}; return a "
                        f"floating-point tensor, e.g. of y's dtype")
    return _CastToStateDtype(func, dtype), out.to(dtype)


class RHSCaller:
    """Calls func at solver time s (t = direction * s) and keeps the statistics.

    func's first output fixes how it is called from then on (``matched_to_state``): as it is, or with
    dy/dt cast to y0's dtype when it returns another floating dtype, so the solution keeps y0's dtype.
    """

    def __init__(self, func: RHS, y0: torch.Tensor, direction: float, stats: SolveStats):
        self.user_func, self.direction, self.stats = func, direction, stats
        self.func: RHS = self._first_evaluation  # replaced by its first call
        self.dtype, self.device = y0.dtype, y0.device
        self.times = stats.t_evaluated
        self._toward_start = -direction * math.inf
        # one-ulp nudges of c = 1 stages without creating tensors: math.nextafter is float64's, numpy
        # gives float32's; float16/bfloat16 have no host twin and go through torch.nextafter
        self._np_dtype = {torch.float32: np.float32}.get(self.dtype)
        self._np_infinity = {-math.inf: np.float32(-math.inf), math.inf: np.float32(math.inf)}

    def __call__(self, s: float, y: torch.Tensor) -> torch.Tensor:
        t = self.direction * s
        self.times.append(t)
        return self.func(torch.scalar_tensor(t, dtype=self.dtype, device=self.device), y)

    def _first_evaluation(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.user_func(t, y)
        self.func, out = matched_to_state(self.user_func, out, self.dtype)
        return out

    def just_before(self, s: float, y: torch.Tensor) -> torch.Tensor:
        """Evaluate one ulp (of y's dtype) before t toward the step's start, as torchdiffeq does for c = 1
        stages, so a discontinuity at the step's end is seen from the inside."""
        return self._nudged(s, y, self._toward_start)

    def just_after(self, s: float, y: torch.Tensor) -> torch.Tensor:
        """Evaluate one ulp after t toward the step's end (torchdiffeq's perturb option at a step's start)."""
        return self._nudged(s, y, -self._toward_start)

    def record(self, s: float) -> float:
        """The time t of an evaluation at solver time s, counted as ``__call__`` counts it, for a caller that
        evaluates func itself (the compiled trial step)."""
        t = self.direction * s
        self.times.append(t)
        return t

    def record_before(self, s: float) -> float:
        """As ``record`` for ``just_before``'s time, one ulp before s toward the step's start."""
        t = self._nudged_time(s, self._toward_start)
        self.times.append(t)
        return t

    def _nudged(self, s: float, y: torch.Tensor, toward: float) -> torch.Tensor:
        t = self._nudged_time(s, toward)
        self.times.append(t)
        return self.func(torch.scalar_tensor(t, dtype=self.dtype, device=self.device), y)

    def _nudged_time(self, s: float, toward: float) -> float:
        t = self.direction * s
        if self.dtype == torch.float64:
            return math.nextafter(t, toward)
        if self._np_dtype is not None:
            return float(np.nextafter(self._np_dtype(t), self._np_infinity[toward]))
        return float(torch.nextafter(torch.tensor(t, dtype=self.dtype), torch.tensor(toward, dtype=self.dtype)))


def output_times(t: torch.Tensor) -> tuple[list[float], float]:
    """The output times in solver time (increasing) and the direction of integration (+1 or -1)."""
    times = t.detach().tolist()  # exact as Python floats, whatever t's dtype
    direction = -1.0 if len(times) > 1 and times[1] < times[0] else 1.0
    return [direction * v for v in times], direction


def check_derivative(f0: torch.Tensor, y0: torch.Tensor, t0: float) -> None:
    if not isinstance(f0, torch.Tensor) or f0.shape != y0.shape:
        shape = tuple(f0.shape) if isinstance(f0, torch.Tensor) else type(f0).__name__
        raise ValueError(f"func must return dy/dt shaped like y {tuple(y0.shape)}, got {shape}")
    if not all_finite(f0):
        raise NonFiniteStateError(t0, "func's output")


def partial_t(out_s: list[float], reached: int, direction: float) -> torch.Tensor:
    """The output times reached so far, in the caller's time (for MaxStepsReachedError)."""
    return torch.tensor([direction * v for v in out_s[:reached]], dtype=torch.float64)
