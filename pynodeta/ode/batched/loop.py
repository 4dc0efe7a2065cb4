"""The per-sample stepping loop: explicit Runge-Kutta steps where every sample has its own time and step size.

Each iteration takes one trial step for the whole batch (one call of func per stage, on every sample), then
decides per sample: accepted samples move to their new time, rejected ones stay and retry with a smaller
step, finished ones sit at their end with a zero step and are masked out of every update and statistic.
Everything stays on the device; the one host synchronisation per step reads four flags at once (anyone
still running? outputs to write? step-size underflow? step limit?).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import MaxStepsReachedError, NonFiniteStateError, StepSizeUnderflowError, warn_long_solve
from ..methods import Method
from .control import ErrorRatio, Norm, StepRule, select_initial_steps
from .stats import BatchedSolveStats
from .times import SampleTimes

__all__ = ["LoopSettings", "StepObserver", "integrate_batched"]

RHS = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (t: (batch,), y: (batch, features)) -> dy/dt


@dataclass(frozen=True)
class LoopSettings:
    """What the loop reads of the typed controller, lowered to numbers (tolerances are scalars here)."""

    rtol: float
    atol: float
    error_norm: Norm  # (batch, features) -> (batch,): the step's error ratio
    initial_norm: Norm  # the same reduction as torchdiffeq's initial-step rule
    first_step: float | None
    min_step: float
    max_step: float
    safety: float
    ifactor: float
    dfactor: float
    gains: tuple[float, float] | None  # None: the I rule
    max_steps: int
    warn_after_steps: int | None


class StepObserver:
    """Hooks for a right-hand side that keeps per-step state (the adjoint's parameter gradients)."""

    fresh_first_stage = False  # True: evaluate the first stage anew each step instead of reusing f(t1, y1)

    def begin_step(self) -> None:
        """Called before the first stage of every trial step."""

    def end_step(self, weight: torch.Tensor) -> None:
        """Called after the decision with ``weight = h`` for samples that accepted the step, 0 otherwise."""


def _combine_stages(ks, weights) -> torch.Tensor:
    """sum_j w_j k_j over the nonzero (j, w_j) pairs (scalar weights: one kernel each)."""
    (j, w), *rest = weights
    out = torch.mul(ks[j], w)
    for j, w in rest:
        out.add_(ks[j], alpha=w)
    return out


class _Caller:
    """Calls func at per-sample solver times and counts the calls."""

    def __init__(self, rhs: RHS, times: SampleTimes, dtype: torch.dtype, stats: BatchedSolveStats):
        self.rhs, self.times, self.dtype, self.stats = rhs, times, dtype, stats

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.stats.nfe += 1
        return self.rhs(self.times.user_time(s).to(self.dtype), y)


class _Outputs:
    """Dense output per sample: the outputs that fall inside an accepted step, from that step's stages."""

    def __init__(self, method: Method, times: SampleTimes, y0: torch.Tensor):
        self.method, self.s_out = method, times.s
        batch, n = self.s_out.shape
        self.filled = torch.zeros(batch, n, dtype=torch.bool, device=y0.device)
        self.filled[:, 0] = True
        self.ys = y0.new_zeros(batch, n, y0.shape[1])
        self.ys[:, 0] = y0

    def due(self, accepted: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        """(batch, n) mask of outputs inside this step, for samples that accepted it."""
        return ~self.filled & accepted[:, None] & (self.s_out <= s1[:, None])

    def write(self, due, s, dt, h, y, y1, ks) -> None:
        sample, index = due.nonzero(as_tuple=True)
        s_out = self.s_out[sample, index]
        theta = (s_out - s[sample]) / dt[sample]
        weights = torch.stack([torch.as_tensor(w, dtype=theta.dtype, device=theta.device).expand_as(theta)
                               for w in self.method.dense(theta)], dim=1).to(y.dtype)  # (pairs, stages)
        stages = torch.stack(ks, dim=0)[:, sample]  # (stages, pairs, features)
        values = y[sample] + h[sample] * torch.einsum("ps,spf->pf", weights, stages)
        at_end = (s_out == s[sample] + dt[sample])[:, None]
        values = torch.where(at_end, y1[sample], values)  # the step's own end: its solution, not a fit
        self.ys = self.ys.index_put((sample, index), values)
        self.filled = self.filled | due


def integrate_batched(rhs: RHS, y0: torch.Tensor, times: SampleTimes, method: Method, settings: LoopSettings,
                      stats: BatchedSolveStats, observer: StepObserver | None = None) -> torch.Tensor:
    """Solve every row of ``y0: (batch, features)`` from its start to its end time; returns
    ``(batch, n, features)``, the state at each sample's output times."""
    observer = observer or StepObserver()
    tab = method.tableau
    a_rows, c, b_row = tab.a_nonzero, tab.c, tab.b_nonzero
    reuse_first, n_stages = not observer.fresh_first_stage, len(tab.c)
    call = _Caller(rhs, times, y0.dtype, stats)
    error_ratio = ErrorRatio(tab.b_err_nonzero, settings.rtol, settings.atol, settings.error_norm)
    outputs = _Outputs(method, times, y0)
    batch = y0.shape[0]
    rule = StepRule(method.error_order, settings.safety, settings.ifactor, settings.dfactor, settings.gains, batch,
                    y0.device)
    s, end, direction = times.start.clone(), times.end, times.direction
    y = y0
    f = call(s, y)
    if f.shape != y.shape:
        raise ValueError(f"func must return dy/dt shaped like y, got {tuple(f.shape)} for a state {tuple(y.shape)}")
    running = s < end
    if settings.first_step is None:
        dt = select_initial_steps(lambda h, y_probe: call(s + h, y_probe), y, f, direction, method.error_order,
                                  settings.rtol, settings.atol, settings.initial_norm)
        stats.nfe_per_sample += 2 * running
    else:
        dt = torch.full_like(s, settings.first_step)
        stats.nfe_per_sample += running
    evaluations_per_step = (n_stages - 1 if reuse_first else n_stages) + (0 if tab.fsal else 1)
    warn_after = settings.warn_after_steps or math.inf
    iteration = 0
    while True:
        dt = dt.clamp(settings.min_step, settings.max_step)
        dt_step = torch.where(running, torch.minimum(dt, end - s), torch.zeros_like(dt))
        reaches_end = s + dt_step >= end
        s1 = torch.where(reaches_end, end, s + dt_step)
        h = (direction * dt_step).to(y.dtype)[:, None]
        observer.begin_step()
        ks = [f if reuse_first else call(s, y)]
        y1 = y
        for i in range(1, n_stages):
            y1 = torch.addcmul(y, h, _combine_stages(ks, a_rows[i]))
            ks.append(call(s1 if c[i] == 1 else s + c[i] * dt_step, y1))
        if not tab.fsal:
            y1 = torch.addcmul(y, h, _combine_stages(ks, b_row))
        ratio = error_ratio(ks, y, y1, h)
        accepted = (ratio <= 1) | (dt_step <= settings.min_step)
        moved = accepted & running
        observer.end_step(torch.where(moved[:, None], h, torch.zeros_like(h)))
        f1 = ks[-1] if tab.fsal else call(s1, y1)
        due = outputs.due(moved, s1)
        stepped_back = running & ~(s1 > s)
        stats.n_steps_per_sample += running
        stats.n_accepted_per_sample += moved
        stats.nfe_per_sample += evaluations_per_step * running
        flags = torch.stack([due.any(), stepped_back.any(), (running & ~torch.isfinite(ratio)).any()])
        dt_next = torch.where(running, rule.next_step(dt_step, ratio, accepted), dt)
        s_new = torch.where(moved, s1, s)
        running_next = running & (s_new < end)
        iteration += 1
        too_many = running_next & (stats.n_steps_per_sample >= settings.max_steps)
        any_running, write, underflow, non_finite, over_limit = torch.cat(
            [running_next.any()[None], flags, too_many.any()[None]]).tolist()
        if write:
            outputs.write(due, s, dt_step, h, y, y1, [*ks, f1] if method.dense_needs_f1 else ks)
        if underflow:
            _raise_underflow(stepped_back, non_finite, times, s, dt_step, stats)
        y = torch.where(moved[:, None], y1, y)
        f = torch.where(moved[:, None], f1, f)
        s, dt, running = s_new, dt_next, running_next
        if not any_running:
            break
        if over_limit:
            _raise_max_steps(too_many, settings.max_steps, times, s, outputs)
        if iteration >= warn_after:
            warn_long_solve(iteration, float(times.user_time(s)[running].flatten()[0]), float(dt[running].min()))
            warn_after = math.inf
    stats.total_steps()
    return outputs.ys


def _raise_underflow(stepped_back, non_finite, times, s, dt, stats) -> None:
    sample = int(stepped_back.nonzero()[0])
    t = float(times.user_time(s)[sample])
    if non_finite:
        raise NonFiniteStateError(t, f"the state of sample {sample} after a trial step")
    raise StepSizeUnderflowError(t, float(dt[sample]), int(stats.nfe_per_sample[sample]))


def _raise_max_steps(too_many, max_steps, times, s, outputs) -> None:
    sample = int(too_many.nonzero()[0])
    reached = int(outputs.filled[sample].sum())
    t_out = times.user_time(times.s.T).T
    raise MaxStepsReachedError(max_steps, float(times.user_time(s)[sample]), t_out[sample, :reached],
                               outputs.ys[sample, :reached])
