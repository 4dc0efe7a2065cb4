"""The native PyTorch backend: explicit Runge-Kutta methods with adaptive or fixed steps.

Runs wherever torch runs (CPU or GPU) and is differentiable, so it serves both direct backprop and
the adjoint. Design choices that make it fast:

- stage combinations are chains of ``Tensor.add_(k, alpha=...)`` with the zero weights skipped, which
  is one cheap kernel per nonzero weight and works unchanged under autograd;
- step-size arithmetic is done on Python floats; the only host synchronisation per step is reading
  the error ratio for the accept/reject decision;
- dense output is evaluated only for steps that contain a requested output time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..adams import ADAMS_METHODS, integrate_adams
from ..errors import MaxStepsReachedError, NonFiniteStateError, StepSizeUnderflowError, warn_long_solve
from ..methods import METHODS, Method, hermite_weights, linear_weights
from ..stats import SolveStats
from ..step_control import make_step_control, select_initial_step
from .base import RHS, Backend, SolverConfig

__all__ = ["TorchBackend"]


def _combine(y: torch.Tensor, ks: Sequence[torch.Tensor], weights, h: float) -> torch.Tensor:
    """y + h * sum_j w_j k_j over the nonzero (j, w_j) pairs, as one out-of-place add then in-place adds."""
    (j, w), *rest = weights
    out = y.add(ks[j], alpha=h * w)
    for j, w in rest:
        out.add_(ks[j], alpha=h * w)
    return out


def _error_estimate(ks: Sequence[torch.Tensor], weights, h: float) -> torch.Tensor:
    """h * sum_j e_j k_j: the difference between the solution and its embedded lower-order twin."""
    (j, w), *rest = weights
    out = torch.mul(ks[j], h * w)
    for j, w in rest:
        out.add_(ks[j], alpha=h * w)
    return out


def _nonzero(weights: Sequence[float]) -> list[tuple[int, float]]:
    return [(j, w) for j, w in enumerate(weights) if w != 0]


class _RHSCaller:
    """Calls func at solver time s (t = direction * s) and keeps the statistics."""

    def __init__(self, func: RHS, y0: torch.Tensor, direction: float, stats: SolveStats):
        self.func, self.direction, self.stats = func, direction, stats
        self.dtype, self.device = y0.dtype, y0.device
        self.times = stats.t_evaluated
        # numpy computes the one-ulp nudge of c = 1 stages without creating tensors (float16/bfloat16
        # have no numpy twin and go through torch.nextafter).
        self._np_dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(self.dtype)
        self._toward_start = -direction * math.inf

    def __call__(self, s: float, y: torch.Tensor) -> torch.Tensor:
        t = self.direction * s
        self.times.append(t)
        return self.func(torch.scalar_tensor(t, dtype=self.dtype, device=self.device), y)

    def just_before(self, s: float, y: torch.Tensor) -> torch.Tensor:
        """Evaluate one ulp (of y's dtype) before t toward the step's start, as torchdiffeq does for c = 1
        stages, so a discontinuity at the step's end is seen from the inside."""
        return self._nudged(s, y, self._toward_start)

    def just_after(self, s: float, y: torch.Tensor) -> torch.Tensor:
        """Evaluate one ulp after t toward the step's end (torchdiffeq's perturb option at a step's start)."""
        return self._nudged(s, y, -self._toward_start)

    def _nudged(self, s: float, y: torch.Tensor, toward: float) -> torch.Tensor:
        if self._np_dtype is not None:
            as_dtype = self._np_dtype
            t = float(np.nextafter(as_dtype(self.direction * s), as_dtype(toward)))
        else:
            t = float(torch.nextafter(torch.tensor(self.direction * s, dtype=self.dtype),
                                      torch.tensor(toward, dtype=self.dtype)))
        self.times.append(t)
        return self.func(torch.scalar_tensor(t, dtype=self.dtype, device=self.device), y)


def _output_times(t: torch.Tensor) -> tuple[list[float], float]:
    times = t.detach().to(torch.float64).tolist()
    direction = -1.0 if len(times) > 1 and times[1] < times[0] else 1.0
    return [direction * v for v in times], direction


def _check_derivative(f0: torch.Tensor, y0: torch.Tensor, t0: float) -> None:
    if not isinstance(f0, torch.Tensor) or f0.shape != y0.shape:
        shape = tuple(f0.shape) if isinstance(f0, torch.Tensor) else type(f0).__name__
        raise ValueError(f"func must return dy/dt shaped like y {tuple(y0.shape)}, got {shape}")
    if not torch.isfinite(f0).all():
        raise NonFiniteStateError(t0, "func's output")


class TorchBackend(Backend):
    name = "torch"
    differentiable = True

    def methods(self) -> tuple[str, ...]:
        return (*METHODS, *ADAMS_METHODS)

    def is_adaptive(self, method: str) -> bool:
        return method not in ADAMS_METHODS and METHODS[method].adaptive

    def integrate(
        self, func: RHS, y0: torch.Tensor, t: torch.Tensor, config: SolverConfig, stats: SolveStats
    ) -> torch.Tensor:
        if config.extra:
            raise ValueError(f"unknown backend_options {sorted(config.extra)} for backend 'torch' (it takes none)")
        out_s, direction = _output_times(t)
        if len(out_s) == 1:
            return y0.unsqueeze(0)
        call = _RHSCaller(func, y0, direction, stats)
        if isinstance(config.method, str) and config.method in ADAMS_METHODS:
            grid = (_constructed_grid(call, y0, out_s, config.grid_constructor) if config.grid_constructor
                    else _fixed_grid(out_s, config.step_size))
            outputs = integrate_adams(config.method, call, y0, out_s, grid, config, stats)
            _check_outputs_finite(outputs, out_s, direction)
            return torch.stack(outputs)
        method = config.method if isinstance(config.method, Method) else METHODS[config.method]
        if method.adaptive:
            outputs = _integrate_adaptive(method, call, y0, out_s, config, stats)
        else:
            outputs = _integrate_fixed(method, call, y0, out_s, config, stats)
            _check_outputs_finite(outputs, out_s, direction)
        return torch.stack(outputs)


class _Stages:
    """Stage evaluation of one explicit Runge-Kutta step (the first of the adaptive loop's three ideas)."""

    def __init__(self, method: Method, call: _RHSCaller):
        tab = method.tableau
        self.call, self.fsal = call, tab.fsal
        self.a_rows, self.c, self.b_rows = tab.a_nonzero, tab.c, tab.b_nonzero
        self.at_end = [ci == 1 for ci in tab.c]

    def step(self, s: float, y: torch.Tensor, f: torch.Tensor, dt: float, h: float):
        """(y1, ks): the solution after a step of size dt from (s, y), with f = func(s, y) as its first stage."""
        call, a_rows, c = self.call, self.a_rows, self.c
        s1 = s + dt
        ks = [f]
        y1 = y
        for i in range(1, len(c)):
            y1 = _combine(y, ks, a_rows[i], h)
            ks.append(call.just_before(s1, y1) if self.at_end[i] else call(s + c[i] * dt, y1))
        if not self.fsal:
            y1 = _combine(y, ks, self.b_rows, h)
        return y1, ks


class _ErrorRatio:
    """norm(error / (atol + rtol * max(|y|, |y1|))) of a step, a host float (the second idea, with the
    step control that reads it)."""

    def __init__(self, method: Method, config: SolverConfig, numel: int):
        self.err_rows = method.tableau.b_err_nonzero
        self.rtol, self.atol, self.norm = config.rtol, config.atol, config.norm
        self.sqrt_n = math.sqrt(numel)

    @torch.no_grad()
    def __call__(self, ks: Sequence[torch.Tensor], y: torch.Tensor, y1: torch.Tensor, h: float) -> float:
        error = _error_estimate(ks, self.err_rows, h)
        tol = torch.maximum(y.abs(), y1.abs()).mul_(self.rtol).add_(self.atol)
        scaled = error.div_(tol)
        if self.norm is None:
            return float(torch.linalg.vector_norm(scaled)) / self.sqrt_n
        return float(self.norm(scaled))


class _DenseOutput:
    """The outputs requested inside an accepted step, from its stages (the third idea)."""

    def __init__(self, method: Method, out_s: list[float], y0: torch.Tensor):
        self.method, self.out_s = method, out_s
        self.outputs = [y0]
        self.next_out = 1

    @property
    def done(self) -> bool:
        return self.next_out >= len(self.out_s)

    def emit(self, s: float, dt: float, h: float, y: torch.Tensor, y1: torch.Tensor, ks, f1: torch.Tensor) -> None:
        out_s, s1, method = self.out_s, s + dt, self.method
        while self.next_out < len(out_s) and out_s[self.next_out] <= s1:
            theta = (out_s[self.next_out] - s) / dt
            if theta == 1.0:
                self.outputs.append(y1)
            else:
                stage_values = ks + [f1] if method.dense_needs_f1 else ks
                self.outputs.append(_combine(y, stage_values, _nonzero(method.dense(theta)), h))
            self.next_out += 1


def _integrate_adaptive(
    method: Method, call: _RHSCaller, y0: torch.Tensor, out_s: list[float], config: SolverConfig, stats: SolveStats
) -> list[torch.Tensor]:
    stages = _Stages(method, call)
    error_ratio = _ErrorRatio(method, config, y0.numel())
    dense = _DenseOutput(method, out_s, y0)
    control = make_step_control(config.controller, method.error_order, config.safety, config.ifactor,
                                config.dfactor, config.gains)
    min_step, max_step, max_num_steps = config.min_step, config.max_step, config.max_num_steps
    warn_after = config.warn_after_steps or math.inf
    direction = call.direction

    s, y = out_s[0], y0
    f = call(s, y)
    _check_derivative(f, y0, direction * s)
    stops = _stops(config, out_s, direction)  # (solver time, is a jump) to land on, nearest first
    if config.first_step is None:
        # the probe of the initial-step rule stays short of the first stop, as Hairer's HINIT keeps it
        # short of x_end: func may be undefined past it (a jump, the end of a DDPM schedule's σ range)
        dt = select_initial_step(lambda h, y_probe: call(s + h, y_probe), y, f, direction, method.error_order,
                                 config.rtol, config.atol, config.norm,
                                 max_probe=stops[-1][0] - s if stops else math.inf)
    else:
        dt = config.first_step
    n_steps = n_accepted = 0
    step_sizes = stats.step_sizes
    ratio = 0.0
    callbacks = config.callbacks
    try:
        while not dense.done:
            if n_steps >= max_num_steps:
                raise MaxStepsReachedError(max_num_steps, direction * s,
                                           _partial_t(out_s, dense.next_out, direction), torch.stack(dense.outputs))
            if n_steps >= warn_after:
                warn_long_solve(n_steps, direction * s, dt)
                warn_after = math.inf
            dt = min(max(dt, min_step), max_step)
            at_jump = False
            if stops and s + dt >= stops[-1][0]:  # land on the next step_t / jump_t point
                dt, at_jump = stops[-1][0] - s, stops[-1][1]
            s1 = s + dt
            if not s1 > s:
                if not math.isfinite(ratio):
                    raise NonFiniteStateError(direction * s, "the state after a trial step")
                raise StepSizeUnderflowError(direction * s, dt, len(stats.t_evaluated))
            h = direction * dt
            if callbacks is not None:
                callbacks.on_step(direction * s, y, dt)
            y1, ks = stages.step(s, y, f, dt, h)
            n_steps += 1
            ratio = error_ratio(ks, y, y1, h)
            if not math.isfinite(ratio) and dt <= min_step:
                # min_step cannot shrink further: retrying at min_step would repeat the same step forever
                raise NonFiniteStateError(direction * s, f"the state after a trial step of min_step={min_step:.3g}")
            accepted = ratio <= 1 or dt <= min_step
            if callbacks is not None:
                (callbacks.on_accept if accepted else callbacks.on_reject)(direction * s, y, dt)
            if accepted:
                n_accepted += 1
                step_sizes.append(dt)
                f1 = ks[-1] if stages.fsal else call(s1, y1)
                dense.emit(s, dt, h, y, y1, ks, f1)
                s, y, f = s1, y1, f1
                if stops and s >= stops[-1][0]:
                    stops.pop()
                    if at_jump:  # restart from func on the far side of the discontinuity
                        f = call.just_after(s, y)
            dt = control.next_step(dt, ratio, accepted)
    finally:
        stats.n_steps += n_steps
        stats.n_accepted += n_accepted
        stats.n_rejected += n_steps - n_accepted
        stats.nfe = len(stats.t_evaluated)
    return dense.outputs


def _stops(config: SolverConfig, out_s: list[float], direction: float) -> list[tuple[float, bool]]:
    """step_t and jump_t after the start, up to and including the end, in solver time, as a stack with the
    nearest on top. A point at the end makes the last step land there instead of stepping past it and
    interpolating, so func is never evaluated beyond the end (torchdiffeq honours step_t = t[-1] too);
    a jump there needs no restart, the solve is over."""
    if not (config.step_t or config.jump_t):
        return []
    start, end = out_s[0], out_s[-1]
    points = {direction * v: False for v in config.step_t}
    points.update({direction * v: True for v in config.jump_t})  # a jump_t wins over an equal step_t
    return sorted(((s, jump and s < end) for s, jump in points.items() if start < s <= end), reverse=True)


def _check_outputs_finite(outputs: list[torch.Tensor], out_s: list[float], direction: float) -> None:
    """Fixed-grid methods have no error estimate to notice a blow-up; one check of the outputs at the end
    (one host synchronisation per solve) turns NaN/Inf into an error naming the first bad output time."""
    finite = torch.stack([torch.isfinite(y).all() for y in outputs]).tolist()
    if not all(finite):
        raise NonFiniteStateError(direction * out_s[finite.index(False)], "the fixed-grid solution")


def _partial_t(out_s: list[float], reached: int, direction: float) -> torch.Tensor:
    return torch.tensor([direction * v for v in out_s[:reached]], dtype=torch.float64)


def _fixed_grid(out_s: list[float], step_size: float | None) -> list[float]:
    """The step grid: the output times, or torchdiffeq's uniform grid whose last point is moved to t[-1]."""
    if step_size is None:
        return out_s
    start, end = out_s[0], out_s[-1]
    n_points = math.ceil((end - start) / step_size + 1)
    grid = [start + i * step_size for i in range(n_points)]
    grid[-1] = end
    return grid


def _constructed_grid(call: _RHSCaller, y0: torch.Tensor, out_s: list[float], constructor) -> list[float]:
    """torchdiffeq's grid_constructor(func, y0, t): step points in the caller's time, from t[0] to t[-1]."""
    direction = call.direction
    t = torch.tensor([direction * v for v in out_s], dtype=y0.dtype, device=y0.device)
    grid = [direction * float(v) for v in torch.as_tensor(constructor(call.func, y0, t)).reshape(-1).tolist()]
    if len(grid) < 2 or grid[0] != out_s[0] or grid[-1] != out_s[-1] or any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError("options['grid_constructor'] must return a 1-D grid from t[0] to t[-1] (both included), "
                         f"strictly monotone in t's direction; got {[direction * v for v in grid][:8]}")
    return grid


def _integrate_fixed(
    method: Method, call: _RHSCaller, y0: torch.Tensor, out_s: list[float], config: SolverConfig, stats: SolveStats
) -> list[torch.Tensor]:
    tab = method.tableau
    a_rows, c, b_rows = tab.a_nonzero, tab.c, tab.b_nonzero
    cubic = config.interpolation == "cubic"
    dense = hermite_weights(tab.b, fsal=False) if cubic else linear_weights(tab.b)
    if config.grid_constructor is not None:
        grid = _constructed_grid(call, y0, out_s, config.grid_constructor)
    else:
        grid = _fixed_grid(out_s, config.step_size)
    direction = call.direction
    outputs = [y0]
    next_out, n_out = 1, len(out_s)
    perturb = config.perturb  # one-sided evaluations at the step's ends (torchdiffeq's Perturb.NEXT / PREV)
    first_stage = call.just_after if perturb else call
    y, f = y0, first_stage(grid[0], y0)
    _check_derivative(f, y0, direction * grid[0])
    for n_steps, (s, s1) in enumerate(zip(grid[:-1], grid[1:])):
        if n_steps >= config.max_num_steps:
            raise MaxStepsReachedError(config.max_num_steps, direction * s, _partial_t(out_s, next_out, direction),
                                       torch.stack(outputs))
        dt = s1 - s
        h = direction * dt
        if config.callbacks is not None:
            config.callbacks.on_step(direction * s, y, dt)
        ks = [f if f is not None else first_stage(s, y)]
        for i in range(1, len(c)):
            y_stage = _combine(y, ks, a_rows[i], h)
            ks.append(call.just_before(s1, y_stage) if perturb and c[i] == 1 else call(s + c[i] * dt, y_stage))
        y1 = _combine(y, ks, b_rows, h)
        f = None
        while next_out < n_out and out_s[next_out] <= s1:
            theta = (out_s[next_out] - s) / dt if dt != 0 else 1.0
            if theta == 1.0:
                outputs.append(y1)
            elif cubic:
                f = call(s1, y1) if f is None else f  # reused as the next step's first stage
                outputs.append(_combine(y, ks + [f], _nonzero(dense(theta)), h))
            else:
                outputs.append(torch.lerp(y, y1, theta))
            next_out += 1
        stats.step_sizes.append(dt)
        stats.n_steps += 1
        stats.n_accepted += 1
        y = y1
        if perturb:
            f = None  # the cubic output's f(t1, y1) is not the next step's one-sided first stage
    stats.nfe = len(stats.t_evaluated)
    return outputs
