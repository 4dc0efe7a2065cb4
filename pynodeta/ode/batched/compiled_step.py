"""The per-sample trial step as one compiled graph (``batched=True, backend_options={"compile": True}``).

The eager per-sample step (``loop._Stages`` then ``control.ErrorRatio``) is the stage times, one call of
func per stage with one or two kernels per nonzero tableau weight between them, and the per-sample error
norm. Compiled with ``torch.compile``, those become one graph in which the combinations fuse into func's
kernels. The decisions, the step rule, the dense output and the statistics stay in the eager loop, which
reads the same ``(y1, ks, h, t_end, ratio)`` either way; the loop's own tensor ops are not compiled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..backends.compiled_step import run_compiled, weighted
from ..methods import Method

__all__ = ["CompiledStages"]

_COMPILED: dict = {}  # tableau -> the compiled trial step


class CompiledStages:
    """``trial(...)`` of an explicit adaptive method with a per-sample step, by one compiled graph."""

    def __init__(self, method: Method, call, rtol: float, atol: float, norm, y0: torch.Tensor):
        tab = method.tableau
        self.call, self.fsal, self.norm = call, tab.fsal, norm
        self.calls_per_step = tab.stages - 1
        # tensor inputs of the graph: a Python float would be baked into it as a constant
        self.operands = tuple(torch.tensor(v, dtype=y0.dtype, device=y0.device) for v in (rtol, atol))
        if tab not in _COMPILED:
            _COMPILED[tab] = torch.compile(_trial_step_function(tab))
        self.graph = _COMPILED[tab]

    def trial(self, s, s1, dt, direction, y, f, observer, error_ratio=None):
        """(y1, ks, h, t_end, ratio): the step of size dt (float64 (batch,)) from (s, y) to s1, with
        f = func(s, y), and its per-sample error ratio (float64 (batch,)); ``error_ratio`` is the eager
        loop's and is not used here (the graph computes its own)."""
        observer.begin_step()
        # the solve's first evaluation (eager) has fixed call.rhs: func itself, or func with a dtype cast
        y1, ks, h, t_end, ratio = run_compiled(self.graph, self.call.rhs, self.norm, y, f, s, s1, dt, direction,
                                               *self.operands)
        self.call.stats.nfe += self.calls_per_step
        return y1, [f, *ks], h, t_end, ratio


def _trial_step_function(tab) -> Callable:
    """The plain function ``torch.compile`` turns into one graph: the tableau is fixed in its closure, func
    and the norm are arguments."""
    rows, b_row, err_row, fsal = tab.a_nonzero[1:], tab.b_nonzero, tab.b_err_nonzero, tab.fsal
    stage_c = [(c, c == 1) for c in tab.c[1:]]

    def trial_step(rhs, norm, y, f, s, s1, dt, direction, rtol, atol):
        dtype = y.dtype
        t_end, h = (direction * s1).to(dtype), (direction * dt).to(dtype)[:, None]
        ks = [f]
        y_stage = y
        for row, (c, at_end) in zip(rows, stage_c):
            y_stage = y + h * weighted(ks, row)
            ks.append(rhs(t_end if at_end else (direction * (s + c * dt)).to(dtype), y_stage))
        y1 = y_stage if fsal else y + h * weighted(ks, b_row)
        # the decision needs no gradient: the error is formed from detached stages
        error = h.detach() * weighted([k.detach() for k in ks], err_row)
        scale = torch.maximum(y.detach().abs(), y1.detach().abs()) * rtol + atol
        ratio = norm(error / scale).to(torch.float64)
        return y1, ks[1:], h, t_end, ratio

    return trial_step
