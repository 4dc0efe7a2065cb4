"""The native backend's adaptive Runge-Kutta loop, as named stages.

A step is: bound the step size (``StepBounds``), evaluate the stages (``Stages``), measure the error
(``ErrorRatio``, which holds the one host synchronisation per step: reading the ratio for the
accept/reject decision), then, if accepted, emit the outputs the step covers (``DenseOutput``); the
step control rule of ``step_control.py`` sizes the next step on Python floats.

Cost beyond func per step: one tensor op per nonzero tableau weight, one per nonzero error weight and
five for the tolerance-scaled norm (|y| is reused from the previous step, scalar tolerances are 0-d
tensors made once, since an op with a Python-number operand costs several times one with a tensor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import MaxStepsReachedError, NonFiniteStateError, StepSizeUnderflowError, warn_long_solve
from ..methods import Method
from ..stats import SolveStats
from ..step_control import make_step_control, select_initial_step
from .base import SolverConfig
from .compiled_step import CompiledTrialStep
from .graphed_step import GraphedTrialStep
from .rk_parts import RHSCaller, check_derivative, combine, nonzero, partial_t

__all__ = ["integrate_adaptive", "EagerTrialStep", "Stages", "ErrorRatio", "DenseOutput", "StepBounds", "AcceptedStep"]

AcceptedStep = tuple[float, float, torch.Tensor, list[torch.Tensor]]
"""(s, dt, y at s, stage values for the dense weights) of one accepted step, in solver time."""


def integrate_adaptive(
    method: Method, call: RHSCaller, y0: torch.Tensor, out_s: list[float], config: SolverConfig,
    stats: SolveStats, keep_steps: list[AcceptedStep] | None = None, trial_step: str = "eager",
) -> list[torch.Tensor]:
    """The states at ``out_s`` (solver times, increasing); every accepted step is appended to ``keep_steps``
    when it is given (the dense output of the whole solve). ``trial_step``: "eager" ops, "compile" (one
    compiled graph, ``compiled_step.py``) or "cuda_graph" (a replayed CUDA graph, ``graphed_step.py``); the
    loop around the trial steps is the same."""
    trial = _TRIAL_STEPS[trial_step](method, call, config, y0)
    dense, bounds = DenseOutput(method, out_s, y0, keep_steps), StepBounds(config, out_s, call.direction, stats)
    control = make_step_control(config.controller, method.error_order, config.safety, config.ifactor,
                                config.dfactor, config.gains)
    callbacks, direction = config.callbacks, call.direction
    s, y = out_s[0], y0
    f = call(s, y)
    check_derivative(f, y0, direction * s)
    dt = config.first_step if config.first_step is not None else _initial_step(method, call, config, s, y, f,
                                                                               bounds.stops)
    n_steps = n_accepted = 0
    ratio = 0.0
    try:
        while not dense.done:
            bounds.check_budget(n_steps, s, dt, dense)
            dt, at_jump = bounds.bounded(s, dt, ratio)
            h = direction * dt
            if callbacks is not None:
                callbacks.on_step(direction * s, y, dt)
            y1, ks, ratio = trial(s, y, f, dt, h)
            n_steps += 1
            accepted = bounds.accepts(ratio, s, dt)
            if callbacks is not None:
                (callbacks.on_accept if accepted else callbacks.on_reject)(direction * s, y, dt)
            if accepted:
                n_accepted += 1
                stats.step_sizes.append(dt)
                f1 = trial.derivative_at_end(ks, s + dt, y1)
                dense.emit(s, dt, h, y, y1, ks, f1)
                s, y = s + dt, y1
                f = bounds.passed_stops(s, y, f1, at_jump, call)
            dt = control.next_step(dt, ratio, accepted)
    finally:
        stats.n_steps += n_steps
        stats.n_accepted += n_accepted
        stats.n_rejected += n_steps - n_accepted
        stats.nfe = len(stats.t_evaluated)
    return dense.outputs


def _initial_step(method: Method, call: RHSCaller, config: SolverConfig, s: float, y: torch.Tensor,
                  f: torch.Tensor, stops: list[tuple[float, bool]]) -> float:
    # the probe of the initial-step rule stays short of the first stop, as Hairer's HINIT keeps it short
    # of x_end: func may be undefined past it (a jump, the end of a DDPM schedule's noise range)
    return select_initial_step(lambda h, y_probe: call(s + h, y_probe), y, f, call.direction, method.error_order,
                               config.rtol, config.atol, config.norm,
                               max_probe=stops[-1][0] - s if stops else math.inf)


class EagerTrialStep:
    """``(y1, ks, ratio)`` of one trial step, op by op: the stages, then the error ratio."""

    def __init__(self, method: Method, call: RHSCaller, config: SolverConfig, y0: torch.Tensor):
        self.stages, self.error_ratio = Stages(method, call), ErrorRatio(method, config, y0)
        self.derivative_at_end = self.stages.derivative_at_end

    def __call__(self, s: float, y: torch.Tensor, f: torch.Tensor, dt: float, h: float):
        y1, ks = self.stages.step(s, y, f, dt, h)
        return y1, ks, self.error_ratio(ks, y, y1, h)


_TRIAL_STEPS = {"eager": EagerTrialStep, "compile": CompiledTrialStep, "cuda_graph": GraphedTrialStep}


class Stages:
    """Stage evaluation of one explicit Runge-Kutta step."""

    def __init__(self, method: Method, call: RHSCaller):
        tab = method.tableau
        self.call, self.fsal, self.b_row = call, tab.fsal, tab.b_nonzero
        a_rows = tab.a_nonzero
        # (nonzero weights of the stage's row, its c, whether it sits at the step's end)
        self.rows = [(a_rows[i], tab.c[i], tab.c[i] == 1) for i in range(1, tab.stages)]

    def step(self, s: float, y: torch.Tensor, f: torch.Tensor, dt: float, h: float):
        """(y1, ks): the solution after a step of size dt from (s, y), with f = func(s, y) as its first stage."""
        call, s1 = self.call, s + dt
        ks = [f]
        y1 = y
        for row, c, at_end in self.rows:
            y1 = combine(y, ks, row, h)
            ks.append(call.just_before(s1, y1) if at_end else call(s + c * dt, y1))
        if not self.fsal:
            y1 = combine(y, ks, self.b_row, h)
        return y1, ks

    def derivative_at_end(self, ks: list[torch.Tensor], s1: float, y1: torch.Tensor) -> torch.Tensor:
        """f(s1, y1): the last stage of a first-same-as-last tableau, else one more evaluation."""
        return ks[-1] if self.fsal else self.call(s1, y1)


class ErrorRatio:
    """norm(error / (atol + rtol * max(|y|, |y1|))) of a trial step, read to the host as a float."""

    def __init__(self, method: Method, config: SolverConfig, y0: torch.Tensor):
        self.err_first, *self.err_rest = method.tableau.b_err_nonzero
        self.rtol, self.atol = (_operand(tol, y0) for tol in (config.rtol, config.atol))
        self.norm = config.norm
        self.rms_scale = 1.0 / math.sqrt(y0.numel())
        # |y| and |y1| of the last trial step: the next trial starts from one of the two
        self._last: tuple[torch.Tensor | None, ...] = (None, None, None, None)

    def __call__(self, ks: Sequence[torch.Tensor], y: torch.Tensor, y1: torch.Tensor, h: float) -> float:
        if torch.is_grad_enabled():  # the decision needs no graph; outside autograd the context is skipped
            with torch.no_grad():
                return self._ratio(ks, y, y1, h)
        return self._ratio(ks, y, y1, h)

    def _ratio(self, ks: Sequence[torch.Tensor], y: torch.Tensor, y1: torch.Tensor, h: float) -> float:
        j, w = self.err_first
        # a 0-d operand of y's dtype rounds h * w as a Python number would, at a fraction of the cost; kept on
        # the host, it reaches a GPU kernel as an argument (no copy, no extra launch)
        error = torch.mul(ks[j], torch.scalar_tensor(h * w, dtype=y.dtype))
        for j, w in self.err_rest:
            error.add_(ks[j], alpha=h * w)
        abs_y, abs_y1 = self._absolute(y), y1.abs()
        self._last = (y, abs_y, y1, abs_y1)
        tol = torch.maximum(abs_y, abs_y1).mul_(self.rtol).add_(self.atol)
        scaled = error.div_(tol)
        if self.norm is None:
            return float(torch.linalg.vector_norm(scaled)) * self.rms_scale
        return float(self.norm(scaled))


    def _absolute(self, y: torch.Tensor) -> torch.Tensor:
        """|y|, reused when y is the last trial's start (after a rejection) or end (after an acceptance)."""
        last_y, last_abs_y, last_y1, last_abs_y1 = self._last
        if y is last_y1:
            return last_abs_y1
        return last_abs_y if y is last_y else y.abs()


def _operand(tol: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A tolerance as a tensor operand (a Python number would be wrapped again by every op); a scalar one
    is a 0-d host tensor, which a GPU kernel takes as an argument like a number."""
    if isinstance(tol, torch.Tensor):
        return tol
    return torch.scalar_tensor(tol, dtype=like.dtype)


class DenseOutput:
    """The outputs requested inside each accepted step, from its stages (the method's dense weights)."""

    def __init__(self, method: Method, out_s: list[float], y0: torch.Tensor,
                 keep_steps: list[AcceptedStep] | None = None):
        self.method, self.out_s, self.keep_steps = method, out_s, keep_steps
        self.outputs = [y0]
        self.next_out = 1

    @property
    def done(self) -> bool:
        return self.next_out >= len(self.out_s)

    def emit(self, s: float, dt: float, h: float, y: torch.Tensor, y1: torch.Tensor, ks: list[torch.Tensor],
             f1: torch.Tensor) -> None:
        out_s, s1, method = self.out_s, s + dt, self.method
        has_output = self.next_out < len(out_s) and out_s[self.next_out] <= s1
        if self.keep_steps is None and not has_output:
            return  # most accepted steps contain no output time: no stage list to build
        stage_values = ks + [f1] if method.dense_needs_f1 else ks
        if self.keep_steps is not None:
            self.keep_steps.append((s, dt, y, stage_values))
        while self.next_out < len(out_s) and out_s[self.next_out] <= s1:
            theta = (out_s[self.next_out] - s) / dt
            if theta == 1.0:
                self.outputs.append(y1)
            else:
                self.outputs.append(combine(y, stage_values, nonzero(method.dense(theta)), h))
            self.next_out += 1


class StepBounds:
    """Where the next step may go: min_step/max_step, the step_t/jump_t stops, the step budget, and the
    checks that turn a solve that cannot advance into an error naming where it stopped."""

    def __init__(self, config: SolverConfig, out_s: list[float], direction: float, stats: SolveStats):
        self.min_step, self.max_step, self.max_num_steps = config.min_step, config.max_step, config.max_num_steps
        self.warn_after = config.warn_after_steps or math.inf
        self.stops = _stops(config, out_s, direction)  # (solver time, is a jump), nearest on top
        self.out_s, self.direction, self.stats = out_s, direction, stats

    def check_budget(self, n_steps: int, s: float, dt: float, dense: DenseOutput) -> None:
        if n_steps >= self.max_num_steps:
            raise MaxStepsReachedError(self.max_num_steps, self.direction * s,
                                       partial_t(self.out_s, dense.next_out, self.direction),
                                       torch.stack(dense.outputs))
        if n_steps >= self.warn_after:
            warn_long_solve(n_steps, self.direction * s, dt)
            self.warn_after = math.inf

    def bounded(self, s: float, dt: float, last_ratio: float) -> tuple[float, bool]:
        """(dt within [min_step, max_step] and cut to land on the next stop, whether that stop is a jump)."""
        dt = min(max(dt, self.min_step), self.max_step)
        at_jump = False
        if self.stops and s + dt >= self.stops[-1][0]:
            dt, at_jump = self.stops[-1][0] - s, self.stops[-1][1]
        if not s + dt > s:
            if not math.isfinite(last_ratio):
                raise NonFiniteStateError(self.direction * s, "the state after a trial step")
            raise StepSizeUnderflowError(self.direction * s, dt, len(self.stats.t_evaluated))
        return dt, at_jump

    def accepts(self, ratio: float, s: float, dt: float) -> bool:
        if not math.isfinite(ratio) and dt <= self.min_step:
            # min_step cannot shrink further: retrying at min_step would repeat the same step forever
            raise NonFiniteStateError(self.direction * s,
                                      f"the state after a trial step of min_step={self.min_step:.3g}")
        return ratio <= 1 or dt <= self.min_step

    def passed_stops(self, s: float, y: torch.Tensor, f: torch.Tensor, at_jump: bool,
                     call: RHSCaller) -> torch.Tensor:
        """The derivative to start the next step from: past a jump_t, func evaluated just after it."""
        if self.stops and s >= self.stops[-1][0]:
            self.stops.pop()
            if at_jump:
                return call.just_after(s, y)
        return f


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

