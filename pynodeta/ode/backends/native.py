"""The native PyTorch backend: explicit Runge-Kutta methods with adaptive or fixed steps.

Runs wherever torch runs (CPU or GPU) and is differentiable, so it serves both direct backprop and
the adjoint. Design choices that make it fast:

- stage combinations are chains of ``Tensor.add_(k, alpha=...)`` with the zero weights skipped, which
  is one cheap kernel per nonzero weight and works unchanged under autograd (``rk_parts.py``);
- step-size arithmetic is done on Python floats; the only host synchronisation per step is reading
  the error ratio for the accept/reject decision (the adaptive loop is ``adaptive.py``);
- dense output is evaluated only for steps that contain a requested output time.
"""

from __future__ import annotations

import math

import torch

from ..adams import ADAMS_METHODS, integrate_adams
from ..errors import MaxStepsReachedError, NonFiniteStateError
from ..methods import METHODS, Method, hermite_weights, linear_weights
from ..stats import SolveStats
from .adaptive import integrate_adaptive
from .base import RHS, Backend, SolverConfig
from .compiled_step import compile_option
from .graphed_step import cuda_graph_option
from .rk_parts import RHSCaller, add_increment, check_derivative, combine, nonzero, output_times, partial_t

__all__ = ["TorchBackend"]


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
        extra = dict(config.extra)
        step = trial_step_option(extra)
        if extra:
            raise ValueError(f"unknown backend_options {sorted(extra)} for backend 'torch' (it takes 'compile' "
                             f"and 'cuda_graph')")
        out_s, direction = output_times(t)
        if len(out_s) == 1:
            return y0.unsqueeze(0)
        call = RHSCaller(func, y0, direction, stats)
        if isinstance(config.method, str) and config.method in ADAMS_METHODS:
            if step != "eager":
                raise ValueError(f"{_spelled(step)} is for the adaptive Runge-Kutta step; {config.method!r} is a "
                                 f"multistep method: drop the option")
            grid = (_constructed_grid(call, y0, out_s, config.grid_constructor) if config.grid_constructor
                    else _fixed_grid(out_s, config.step_size))
            outputs = integrate_adams(config.method, call, y0, out_s, grid, config, stats)
            _check_outputs_finite(outputs, out_s, direction)
            return torch.stack(outputs)
        method = config.method if isinstance(config.method, Method) else METHODS[config.method]
        if step != "eager" and not method.adaptive:
            raise ValueError(f"{_spelled(step)} is for the adaptive step; method {config.method!r} is fixed-grid: drop "
                             f"the option or pick an adaptive method")
        if method.adaptive:
            outputs = integrate_adaptive(method, call, y0, out_s, config, stats, trial_step=step)
        else:
            outputs = _integrate_fixed(method, call, y0, out_s, config, stats)
            _check_outputs_finite(outputs, out_s, direction)
        return torch.stack(outputs)


def _check_outputs_finite(outputs: list[torch.Tensor], out_s: list[float], direction: float) -> None:
    """Fixed-grid methods have no error estimate to notice a blow-up; one check of the outputs at the end
    (one host synchronisation per solve) turns NaN/Inf into an error naming the first bad output time."""
    finite = torch.stack([torch.isfinite(y).all() for y in outputs]).tolist()
    if not all(finite):
        raise NonFiniteStateError(direction * out_s[finite.index(False)], "the fixed-grid solution")


def _fixed_grid(out_s: list[float], step_size: float | None) -> list[float]:
    """The step grid: the output times, or torchdiffeq's uniform grid whose last point is moved to t[-1]."""
    if step_size is None:
        return out_s
    start, end = out_s[0], out_s[-1]
    n_points = math.ceil((end - start) / step_size + 1)
    grid = [start + i * step_size for i in range(n_points)]
    grid[-1] = end
    return grid


def _constructed_grid(call: RHSCaller, y0: torch.Tensor, out_s: list[float], constructor) -> list[float]:
    """torchdiffeq's grid_constructor(func, y0, t): step points in the caller's time, from t[0] to t[-1]."""
    direction = call.direction
    t = torch.tensor([direction * v for v in out_s], dtype=y0.dtype, device=y0.device)
    grid = [direction * float(v) for v in torch.as_tensor(constructor(call.user_func, y0, t)).reshape(-1).tolist()]
    if len(grid) < 2 or grid[0] != out_s[0] or grid[-1] != out_s[-1] or any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError("options['grid_constructor'] must return a 1-D grid from t[0] to t[-1] (both included), "
                         f"strictly monotone in t's direction; got {[direction * v for v in grid][:8]}")
    return grid


def _integrate_fixed(
    method: Method, call: RHSCaller, y0: torch.Tensor, out_s: list[float], config: SolverConfig, stats: SolveStats
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
    check_derivative(f, y0, direction * grid[0])
    for n_steps, (s, s1) in enumerate(zip(grid[:-1], grid[1:])):
        if n_steps >= config.max_num_steps:
            raise MaxStepsReachedError(config.max_num_steps, direction * s, partial_t(out_s, next_out, direction),
                                       torch.stack(outputs), fixed_grid=True)
        dt = s1 - s
        h = direction * dt
        if config.callbacks is not None:
            config.callbacks.on_step(direction * s, y, dt)
        ks = [f if f is not None else first_stage(s, y)]
        for i in range(1, len(c)):
            y_stage = add_increment(y, ks, a_rows[i], h)
            ks.append(call.just_before(s1, y_stage) if perturb and c[i] == 1 else call(s + c[i] * dt, y_stage))
        y1 = add_increment(y, ks, b_rows, h)
        f = None
        while next_out < n_out and out_s[next_out] <= s1:
            theta = (out_s[next_out] - s) / dt if dt != 0 else 1.0
            if theta == 1.0:
                outputs.append(y1)
            elif cubic:
                f = call(s1, y1) if f is None else f  # reused as the next step's first stage
                outputs.append(combine(y, ks + [f], nonzero(dense(theta)), h))
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


def trial_step_option(extra: dict) -> str:
    """'eager', 'compile' or 'cuda_graph': how the adaptive trial step runs, taken out of ``backend_options``."""
    compiled, graphed = compile_option(extra), cuda_graph_option(extra)
    if compiled and graphed:
        raise ValueError("backend_options takes one of 'compile' and 'cuda_graph', not both: the compiled step "
                         "fuses ops (CPU or GPU), the CUDA graph replays a step's launches at once (GPU); pick one")
    return "compile" if compiled else "cuda_graph" if graphed else "eager"


def _spelled(step: str) -> str:
    """The option that chose ``step``, as the user wrote it (for error messages)."""
    return f"backend_options={{{step!r}: True}}"
