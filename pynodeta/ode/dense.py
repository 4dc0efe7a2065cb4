"""``odeint_dense``: the continuous solution of one adaptive solve, as torchdiffeq 0.2.5 exposes it.

The solve keeps every accepted step's start, size, state and stages; evaluating the result at ``t``
finds the step that contains ``t`` and applies the method's dense-output weights there (for dopri5
torchdiffeq's quartic, Shampine 1986), the same formula ``odeint`` uses for its output times, so the
two agree to the last bit at any shared time. ``dense_solve`` is the same solve on ``solve``'s typed
parts, for a tensor or tuple state (the event search narrows its bracket on it).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import replace

import torch

from .backends import get_backend
from .backends.adaptive import AcceptedStep, integrate_adaptive
from .backends.rk_parts import RHSCaller, combine, nonzero, output_times
from .callbacks import find_callbacks
from .methods import METHODS, Method
from .parts import solver_config, typed_parts
from .settings import IController
from .stats import SolveStats, _publish
from .validation import StateStructure, check_times, flatten_state, warn_if_unresolvable

__all__ = ["odeint_dense", "DenseSolution"]


class DenseSolution:
    """``y(t)`` for any ``t`` between ``t0`` and ``t1`` (both included), from the steps of one solve.

    Call it with a number or a 0-d tensor (returns a tensor shaped like ``y0``) or a 1-D tensor of times
    (returns ``(len(t), *y0.shape)``); a tuple ``y0`` (``dense_solve``) gives a tuple of such. Differentiable
    with respect to ``y0`` and ``func``'s parameters.

    Attributes:
        t0, t1: the interval solved over (Python floats).
        stats: the solve's statistics (NFE, steps, evaluation times).
    """

    def __init__(self, method: Method, steps: list[AcceptedStep], direction: float, t0: float, t1: float,
                 stats: SolveStats, y0: torch.Tensor, state: StateStructure | None = None):
        self.method, self.steps, self.direction = method, steps, direction
        self.t0, self.t1, self.stats, self._y0 = t0, t1, stats, y0
        self._state = state if state is not None else StateStructure(None)  # None: y0 is one tensor
        self._starts = [s for s, *_ in steps]

    def __call__(self, t: float | torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if isinstance(t, torch.Tensor) and t.ndim == 1:
            return self._shaped(torch.stack([self._at(float(v)) for v in t.detach().tolist()]), (len(t),))
        if isinstance(t, torch.Tensor) and t.ndim > 1:
            raise ValueError(f"t must be a number, a 0-d tensor or a 1-D tensor of times, got shape {tuple(t.shape)}")
        return self._shaped(self._at(float(t)), ())

    def _shaped(self, flat: torch.Tensor, lead: tuple[int, ...]):
        return self._state.split(flat, lead) if self._state.is_tuple else flat

    def _at(self, t: float) -> torch.Tensor:
        low, high = min(self.t0, self.t1), max(self.t0, self.t1)
        if not low <= t <= high:
            raise ValueError(f"t = {t} is outside the solved interval [{low}, {high}]; solve over a longer one")
        if not self.steps:  # an empty state: nothing was integrated
            return self._y0.clone()
        s = self.direction * t
        index = max(bisect.bisect_right(self._starts, s) - 1, 0)
        start, dt, y, stage_values = self.steps[index]
        weights = nonzero(self.method.dense((s - start) / dt))
        if not weights:  # t is the step's start
            return y.clone()
        return combine(y, stage_values, weights, self.direction * dt)


def odeint_dense(func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y0: torch.Tensor,
                 t0: float | torch.Tensor, t1: float | torch.Tensor, *, rtol: float = 1e-7, atol: float = 1e-9,
                 method: str | Method | None = None, options: dict | None = None) -> DenseSolution:
    """Solve ``dy/dt = func(t, y)`` from ``t0`` to ``t1`` and return the solution as a callable ``y(t)``,
    as ``torchdiffeq.odeint_dense``: ``odeint_dense(func, y0, 0.0, 5.0)(torch.tensor(2.5))``.

    ``y0`` is one tensor (as in torchdiffeq). ``method`` is an adaptive method (default "dopri5", the only
    one torchdiffeq 0.2.5 takes), ``options`` those of ``odeint`` for it. ``t1 < t0`` integrates backwards.
    """
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"odeint_dense takes a single tensor y0 (as torchdiffeq's), got {type(y0).__name__}; "
                        "concatenate the parts of a tuple state")
    method = method or "dopri5"
    parts = typed_parts(get_backend("torch"), method, None, False, None, rtol=rtol, atol=atol, options=options)
    resolved = parts.method if isinstance(parts.method, Method) else METHODS.get(parts.method)
    if resolved is None or not resolved.adaptive:
        raise ValueError(f"odeint_dense needs an adaptive method such as 'dopri5' (its dense output comes "
                         f"from the steps), got {method!r}")
    return dense_solve(func, y0, t0, t1, method=resolved, controller=parts.controller, max_steps=parts.max_steps)


def dense_solve(func: Callable, y0: torch.Tensor | tuple[torch.Tensor, ...], t0: float | torch.Tensor,
                t1: float | torch.Tensor, *, method: Method, controller: IController, max_steps: int | None = None,
                warn_after_steps: int | None = 100_000) -> DenseSolution:
    """``odeint_dense`` on ``solve``'s typed parts (an adaptive Runge-Kutta ``Method`` and its controller, on
    the torch backend): one solve from ``t0`` to ``t1`` kept as its continuous solution. ``y0`` may be a
    tuple of tensors, and the states come back in its structure. As ``solve`` does, it calls func's step
    callbacks and reports its statistics to ``record_stats``."""
    t = check_times(torch.tensor([float(t0), float(t1)], dtype=torch.float64))
    y0, state = flatten_state(y0)
    config = solver_config(method, controller, max_steps, warn_after_steps, None, state, y0)
    warn_if_unresolvable(config, y0)
    callbacks = find_callbacks(func, shape_state=state.split if state.is_tuple else None)
    if callbacks is not None:
        config = replace(config, callbacks=callbacks)
    stats = SolveStats(method=method.name, backend="torch")
    _publish(stats)
    out_s, direction = output_times(t)
    steps: list[AcceptedStep] = []
    if y0.numel() > 0:
        integrate_adaptive(method, RHSCaller(state.wrap(func), y0, direction, stats), y0, out_s, config, stats,
                           steps)
    return DenseSolution(method, steps, direction, float(t0), float(t1), stats, y0, state)
