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

from ..backends.rk_parts import matched_to_state, weighted_sum
from ..errors import MaxStepsReachedError, NonFiniteStateError, StepSizeUnderflowError, warn_long_solve
from ..methods import Method
from .compiled_step import CompiledStages
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
    compile_step: bool = False  # the trial step as one compiled graph (compiled_step.py)


class StepObserver:
    """Hooks for a right-hand side that keeps per-step state (the adjoint's parameter gradients)."""

    def begin_solve(self) -> None:
        """Called once before the first evaluation (f at the start, then the initial-step probe)."""

    def begin_step(self) -> None:
        """Called before the first stage of every trial step."""

    def end_step(self, weight: torch.Tensor, moved: torch.Tensor) -> None:
        """Called after the decision (and after f(t1, y1) of a non-FSAL method) with ``moved``, the samples
        that accepted the step, and ``weight = h`` for them, 0 otherwise."""


def _stage_state(y: torch.Tensor, h: torch.Tensor, ks, weights) -> torch.Tensor:
    """y + h * sum_j w_j k_j over the nonzero (j, w_j) pairs, with the per-sample h: (batch, 1).

    The sum is taken in units of its first weight, which joins h in the closing addcmul as its scalar
    ``value``: one kernel per nonzero weight, none for scaling (a multiplication by a Python number costs
    several times an add)."""
    (j, first), *rest = weights
    if not rest:
        return torch.addcmul(y, h, ks[j], value=first)
    return torch.addcmul(y, h, weighted_sum(ks, weights), value=first)


class _Caller:
    """Calls func at per-sample times (the caller's time, in y's dtype) and counts the calls; dy/dt in
    another floating dtype is cast to y's, as by the unbatched solver (``matched_to_state``)."""

    def __init__(self, rhs: RHS, stats: BatchedSolveStats):
        self.user_rhs, self.stats = rhs, stats
        self.rhs: RHS = self._first_evaluation  # replaced by its first call

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.stats.nfe += 1
        return self.rhs(t, y)

    def _first_evaluation(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.user_rhs(t, y)
        self.rhs, out = matched_to_state(self.user_rhs, out, y.dtype)
        return out


class _Outputs:
    """Dense output per sample. The last output of every sample is its end state (each sample lands exactly
    on its end time); the ones before it fall inside accepted steps and come from those steps' stages."""

    def __init__(self, method: Method, times: SampleTimes, y0: torch.Tensor):
        self.method, self.s_interior = method, times.s[:, 1:-1]
        self.has_interior = self.s_interior.shape[1] > 0
        self.pending = torch.ones_like(self.s_interior, dtype=torch.bool)
        self.interior: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (sample, index, value)
        self.y0 = y0

    def due(self, moved: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        """(batch, n - 2) mask of interior outputs inside this step, for samples that accepted it."""
        return self.pending & moved[:, None] & (self.s_interior <= s1[:, None])

    def write(self, due, s, dt, h, y, ks) -> None:
        sample, index = due.nonzero(as_tuple=True)
        theta = (self.s_interior[sample, index] - s[sample]) / dt[sample]
        weights = torch.stack([torch.as_tensor(w, dtype=theta.dtype, device=theta.device).expand_as(theta)
                               for w in self.method.dense(theta)], dim=1).to(y.dtype)  # (pairs, stages)
        stages = torch.stack(ks, dim=0)[:, sample]  # (stages, pairs, features)
        values = torch.addcmul(y[sample], h[sample], torch.einsum("ps,spf->pf", weights, stages))
        self.interior.append((sample, index + 1, values))
        self.pending = self.pending & ~due

    def assemble(self, y_end: torch.Tensor) -> torch.Tensor:
        batch, features = y_end.shape
        n = self.s_interior.shape[1] + 2
        ys = torch.cat([self.y0[:, None], self.y0.new_zeros(batch, n - 2, features), y_end[:, None]], dim=1)
        for sample, index, values in self.interior:
            ys = ys.index_put((sample, index), values)
        return ys


class _Stages:
    """The trial step of an explicit Runge-Kutta method with a per-sample step (scalar tableau weights, so
    each stage is a chain of one-kernel adds and one addcmul with the per-sample h)."""

    def __init__(self, method: Method, call: _Caller):
        tab = method.tableau
        self.call, self.fsal = call, tab.fsal
        self.a_rows, self.b_row, self.n = tab.a_nonzero, tab.b_nonzero, len(tab.c)
        self.c, self.at_end = tab.c, [ci == 1 for ci in tab.c]
        self.c_column: torch.Tensor | None = None

    def step(self, s, s1, dt, direction, y, f, observer):
        """(y1, ks, h) of a step of size dt (float64 (batch,)) from (s, y) to s1, with f = func(s, y)."""
        dtype = y.dtype
        if self.c_column is None or self.c_column.device != s.device:
            self.c_column = torch.tensor(self.c, dtype=s.dtype, device=s.device)[:, None]
        # the stage times, the end time and h in one (stages + 2, batch) tensor, taken to the caller's time
        # (multiplying by +-1 is exact) and to y's dtype at once, then unbound
        solver_times = torch.cat([torch.addcmul(s, self.c_column, dt), s1[None], dt[None]])
        *t_stages, t_end, h = (direction * solver_times).to(dtype).unbind(0)
        h = h[:, None]
        observer.begin_step()
        ks = [f]  # f(t, y), kept from the previous step (FSAL) or its f(t1, y1)
        y1 = y
        for i in range(1, self.n):
            y1 = _stage_state(y, h, ks, self.a_rows[i])
            ks.append(self.call(t_end if self.at_end[i] else t_stages[i], y1))
        if not self.fsal:
            y1 = _stage_state(y, h, ks, self.b_row)
        return y1, ks, h, t_end

    def trial(self, s, s1, dt, direction, y, f, observer, error_ratio: ErrorRatio):
        """``step`` and its per-sample error ratio: (y1, ks, h, t_end, ratio)."""
        y1, ks, h, t_end = self.step(s, s1, dt, direction, y, f, observer)
        return y1, ks, h, t_end, error_ratio(ks, y, y1, h)


def integrate_batched(rhs: RHS, y0: torch.Tensor, times: SampleTimes, method: Method, settings: LoopSettings,
                      stats: BatchedSolveStats, observer: StepObserver | None = None) -> torch.Tensor:
    """Solve every row of ``y0: (batch, features)`` from its start to its end time; returns
    ``(batch, n, features)``, the state at each sample's output times."""
    call = _Caller(rhs, stats)
    if observer is not None:
        observer.begin_solve()
    s, end, direction = times.start.clone(), times.end, times.direction
    f = call(times.user_time(s).to(y0.dtype), y0)
    if f.shape != y0.shape:
        raise ValueError(f"func must return dy/dt shaped like y, got {tuple(f.shape)} for a state {tuple(y0.shape)}")
    if settings.first_step is None:
        def probe(h, y_probe):
            return call(times.user_time(s + h).to(y0.dtype), y_probe)

        dt = select_initial_steps(probe, y0, f, direction, method.error_order, settings.rtol, settings.atol,
                                  settings.initial_norm)
    else:
        dt = torch.full_like(s, settings.first_step)
    stages = (CompiledStages(method, call, settings.rtol, settings.atol, settings.error_norm, y0)
              if settings.compile_step else _Stages(method, call))
    loop = _Loop(method, settings, stats, times, y0, observer)
    y = loop.run(stages, s, dt, y0, f)
    tab = method.tableau
    per_step = len(tab.c) - 1 + (0 if tab.fsal else 1)
    initial = 1 if settings.first_step is not None else 2
    stats.nfe_per_sample += (initial + per_step * stats.n_steps_per_sample) * (times.start < end)
    stats.total_steps()
    return loop.outputs.assemble(y)


class _StepCounts:
    """The per-sample trial and accepted step counts, added up from each iteration's flags.

    Adding a bool flag to an int64 count converts the flag first, which costs more than the add: the flags
    are kept and summed every ``every`` iterations (and when the loop ends, however it ends) instead. A step
    limit needs the running count, so then they are added every iteration."""

    def __init__(self, stats: BatchedSolveStats, every: int):
        self.stats, self.every = stats, every
        self.trials: list[torch.Tensor] = []
        self.accepted: list[torch.Tensor] = []

    def add(self, trial: torch.Tensor, accepted: torch.Tensor) -> None:
        if self.every == 1:
            self.stats.n_steps_per_sample += trial
            self.stats.n_accepted_per_sample += accepted
            return
        self.trials.append(trial)
        self.accepted.append(accepted)
        if len(self.trials) >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.trials:
            self.stats.n_steps_per_sample += torch.stack(self.trials).sum(dim=0)
            self.stats.n_accepted_per_sample += torch.stack(self.accepted).sum(dim=0)
            self.trials, self.accepted = [], []


class _Loop:
    """The accept/reject loop: per-sample decisions, dense output, and the one host read per step."""

    def __init__(self, method, settings: LoopSettings, stats, times: SampleTimes, y0, observer):
        self.method, self.settings, self.stats, self.times, self.observer = method, settings, stats, times, observer
        self.error_ratio = ErrorRatio(method.tableau.b_err_nonzero, settings.rtol, settings.atol, settings.error_norm)
        self.rule = StepRule(method.error_order, settings.safety, settings.ifactor, settings.dfactor,
                             settings.gains, y0.shape[0], y0.device)
        self.outputs = _Outputs(method, times, y0)
        self.clamp = settings.min_step > 0 or settings.max_step < math.inf
        self.limited = settings.max_steps < 2**31 - 1

    def run(self, stages: _Stages | CompiledStages, s, dt, y, f) -> torch.Tensor:
        counts = _StepCounts(self.stats, every=1 if self.limited else 32)
        try:
            return self._iterate(stages, s, dt, y, f, counts)
        finally:
            counts.flush()  # the counts are complete even when the solve stops with an error

    def _iterate(self, stages: _Stages | CompiledStages, s, dt, y, f, counts: _StepCounts) -> torch.Tensor:
        settings, stats, outputs, end = self.settings, self.stats, self.outputs, self.times.end
        direction, fsal = self.times.direction, self.method.tableau.fsal
        running = s < end
        warn_after, iteration = settings.warn_after_steps or math.inf, 0
        hooks = self.observer or StepObserver()
        while True:
            if self.clamp:
                dt = dt.clamp(settings.min_step, settings.max_step)
            dt_step = torch.minimum(dt, end - s)  # finished samples sit at s == end: a zero step
            s_plain = s + dt_step
            s1 = torch.where(s_plain >= end, end, s_plain)  # land exactly on the end time
            y1, ks, h, t_end, ratio = stages.trial(s, s1, dt_step, direction, y, f, hooks, self.error_ratio)
            accepted = self.rule.accepts(ratio)
            if settings.min_step > 0:
                accepted = accepted | (dt_step <= settings.min_step)
            moved = accepted & running
            f1 = ks[-1] if fsal else stages.call(t_end, y1)
            if self.observer is not None:
                self.observer.end_step(h * moved[:, None], moved)
            counts.add(running, moved)
            stuck = running & (s1 <= s)  # the step is too small to move time: underflow
            s_start, s = s, torch.where(moved, s1, s)
            running = s < end
            flags = [stuck.any(), running.any()]
            if outputs.has_interior:
                due = outputs.due(moved, s1)
                flags.append(due.any())
            if self.limited:
                flags.append((running & (stats.n_steps_per_sample >= settings.max_steps)).any())
            underflow, any_running, *rest = torch.stack(flags).tolist()
            if underflow:
                _raise_underflow(stuck, ratio, self.times, s, dt_step, stats)
            if outputs.has_interior and rest.pop(0):
                outputs.write(due, s_start, dt_step, h, y, [*ks, f1] if self.method.dense_needs_f1 else ks)
            dt = self.rule.next_step(dt_step, ratio, accepted)
            keep = moved[:, None]
            y, f = torch.where(keep, y1, y), torch.where(keep, f1, f)
            iteration += 1
            if not any_running:
                return y
            if self.limited and rest.pop(0):
                _raise_max_steps(running & (stats.n_steps_per_sample >= settings.max_steps), settings.max_steps,
                                 self.times, s, outputs)
            if iteration >= warn_after:
                warn_long_solve(iteration, float(self.times.user_time(s)[running][0]), float(dt[running].min()))
                warn_after = math.inf


def _raise_underflow(stepped_back, ratio, times, s, dt, stats) -> None:
    sample = int(stepped_back.nonzero()[0])
    t = float(times.user_time(s)[sample])
    if not bool(torch.isfinite(ratio[sample])):
        raise NonFiniteStateError(t, f"the state of sample {sample} after a trial step")
    raise StepSizeUnderflowError(t, float(dt[sample]), stats.nfe)  # calls of func so far


def _raise_max_steps(too_many, max_steps, times, s, outputs) -> None:
    sample = int(too_many.nonzero()[0])
    reached = 1 + int((~outputs.pending[sample]).sum())
    t_out = times.user_time(times.s.T).T
    partial = outputs.assemble(outputs.y0)[sample, :reached]  # the end column is not reached: dropped
    raise MaxStepsReachedError(max_steps, float(times.user_time(s)[sample]), t_out[sample, :reached], partial)
