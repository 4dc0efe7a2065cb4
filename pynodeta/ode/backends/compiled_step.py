"""The adaptive Runge-Kutta trial step as one compiled graph: ``backend_options={"compile": True}``.

Eagerly, a dopri5 trial step is six calls of func with about forty small tensor ops between them (the
stage combinations and the error norm), each dispatched on its own. Compiled with ``torch.compile``, the
stages, func's own ops and the error ratio become one graph: the combinations fuse into func's kernels
and the per-op dispatch disappears. What stays on the host is what decides: the accept/reject test on
the one ratio read back per step, the step-size rule, the stops, the dense output and the callbacks,
exactly as in the eager loop, so the same steps are taken up to round-off and NFE is unchanged.

It pays when one func is solved many times (a training loop): the first solve compiles (seconds to tens
of seconds on a CPU), later solves of the same func reuse the compiled graph. ``func`` and the norm are
arguments of the compiled function, not constants, so a new instance of the same module class or a new
solve does not recompile; a new state shape may (``torch.compile``'s own dynamic-shape rule).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..._compile_failures import call_compiled
from ..methods import Method
from .base import SolverConfig
from .rk_parts import RHSCaller

__all__ = ["CompiledTrialStep", "StageTimes", "compile_option", "run_compiled", "tolerance_operand",
           "trial_step_function", "weighted"]

_COMPILED: dict = {}  # tableau -> the compiled trial step (one per tableau, whatever the state's size)


def compile_option(extra: dict[str, Any]) -> bool:
    """Take ``compile`` out of the torch backend's ``backend_options`` (a dict it may modify): True or False."""
    value = extra.pop("compile", False)
    if not isinstance(value, bool):
        raise TypeError(f"backend_options['compile'] must be True or False, got {value!r}")
    return value


class CompiledTrialStep:
    """``(y1, ks, ratio)`` of one trial step of an explicit adaptive method, computed by one compiled graph
    whose stage times come from the host (``StageTimes``)."""

    def __init__(self, method: Method, call: RHSCaller, config: SolverConfig, y0: torch.Tensor):
        self.call, self.fsal = call, method.tableau.fsal
        self.stage_times = StageTimes(method, call, y0)
        self.rtol, self.atol = (tolerance_operand(tol, y0) for tol in (config.rtol, config.atol))
        self.norm = config.norm
        self.graph = _compiled_trial(method)

    def __call__(self, s: float, y: torch.Tensor, f: torch.Tensor, dt: float, h: float):
        stage_t, h_t = self.stage_times(s, dt, h)
        y1, ks, ratio = run_compiled(self.graph, self.call.func, self.norm, y, f, stage_t, h_t, self.rtol,
                                     self.atol)
        return y1, [f, *ks], float(ratio)

    def derivative_at_end(self, ks: list[torch.Tensor], s1: float, y1: torch.Tensor) -> torch.Tensor:
        """f(s1, y1): the last stage of a first-same-as-last tableau, else one more (eager) evaluation."""
        return ks[-1] if self.fsal else self.call(s1, y1)


class StageTimes:
    """The stage times and the step of one trial step as device tensors, inputs of a graph that is not rebuilt
    for each step. The times are computed and recorded on the host as the eager ``Stages`` does (c = 1 stages
    one ulp before the step's end, torchdiffeq's rule), so ``SolveStats`` counts the same evaluations."""

    def __init__(self, method: Method, call: RHSCaller, y0: torch.Tensor):
        tab = method.tableau
        self.call = call
        self.stage_c = [(tab.c[i], tab.c[i] == 1) for i in range(1, tab.stages)]
        self.dtype, self.device = y0.dtype, y0.device

    def __call__(self, s: float, dt: float, h: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(the stage times after the first, h) of a step of size dt from solver time s."""
        return (torch.tensor(self.recorded(s, dt), dtype=self.dtype, device=self.device),
                torch.tensor(h, dtype=self.dtype, device=self.device))

    def recorded(self, s: float, dt: float) -> list[float]:
        """The times of the stages after the first, recorded in the statistics, as host floats."""
        call = self.call
        return [call.record_before(s + dt) if at_end else call.record(s + c * dt) for c, at_end in self.stage_c]


def run_compiled(graph: Callable, *args):
    """``graph(*args)``; a failure to compile names the option, since the eager step needs nothing of the kind."""
    return call_compiled(graph, *args, option="backend_options={'compile': True}", what="the solver's step",
                         fix="drop the option to solve with the eager step")


def _compiled_trial(method: Method) -> Callable:
    """The compiled trial step of ``method``'s tableau, built once per tableau."""
    tab = method.tableau
    if tab not in _COMPILED:
        _COMPILED[tab] = torch.compile(trial_step_function(method))
    return _COMPILED[tab]


def weighted(ks, weights) -> torch.Tensor:
    """sum_j w_j k_j over the nonzero (j, w_j) pairs, written as plain ops for the compiler to fuse."""
    (j, w), *rest = weights
    total = ks[j] * w
    for j, w in rest:
        total = total + ks[j] * w
    return total


def trial_step_function(method: Method) -> Callable:
    """The plain function of one trial step that ``torch.compile`` turns into one graph (and that a CUDA graph
    captures, ``graphed_step.py``): the tableau is fixed in its closure, func and norm are arguments (so one
    compiled graph serves every func that traces the same way)."""
    tab = method.tableau
    rows, b_row, err_row, fsal = tab.a_nonzero[1:], tab.b_nonzero, tab.b_err_nonzero, tab.fsal

    def trial_step(func, norm, y, f, stage_t, h, rtol, atol):
        ks = [f]
        y_stage = y
        for i, row in enumerate(rows):
            y_stage = y + weighted(ks, row) * h
            ks.append(func(stage_t[i], y_stage))
        y1 = y_stage if fsal else y + weighted(ks, b_row) * h
        # the step decision needs no gradient: the error is formed from detached stages
        error = weighted([k.detach() for k in ks], err_row) * h.detach()
        scale = torch.maximum(y.detach().abs(), y1.detach().abs()) * rtol + atol
        scaled = error / scale
        ratio = scaled.square().mean().sqrt() if norm is None else norm(scaled)  # RMS, as the eager step
        return y1, ks[1:], ratio

    return trial_step


def tolerance_operand(tol: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A tolerance as a tensor input of the graph (a Python float would be baked into it as a constant)."""
    if isinstance(tol, torch.Tensor):
        return tol.to(like.device)
    return torch.tensor(tol, dtype=like.dtype, device=like.device)
