"""Terminal events, as torchdiffeq 0.2.5's ``odeint(..., event_fn=...)`` and ``odeint_event``.

The solve stops where ``event_fn(t, y)`` first changes sign. The event is located without gradient:
the solution is sampled densely window by window (each window one solve, its outputs from the dense
output), and the bracketing interval is refined by the Illinois variant of regula falsi, each trial
point one short solve from the bracket's left end. Gradients then come from one differentiable solve
from ``t0`` to the (detached) event time, direct or adjoint, with the event time's own dependence on
the inputs added by the implicit-function theorem: ``g(t*, y(t*)) = 0`` gives
``dt* = -(dg/dy . dy) / (dg/dt + dg/dy . f(t*, y(t*)))`` (Chen, Amos & Nickel 2021, eq. 6; the same
rerouting as torchdiffeq's ``ImplicitFnGradientRerouting``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .settings import FixedGrid
from .validation import flatten_state

__all__ = ["solve_until_event"]

_SAMPLES_PER_WINDOW = 32
_MAX_WINDOWS = 10_000
_MAX_REFINEMENTS = 100


def solve_until_event(solve_fn: Callable[..., Any], func, y0, t: torch.Tensor, event_fn, **solve_kwargs):
    """(event_t, solution at [t0, event_t]) as torchdiffeq returns them; ``solve_fn`` is ``solve``."""
    if not callable(event_fn):
        raise TypeError(f"event_fn must be callable as event_fn(t, y) -> scalar tensor, got {event_fn!r}")
    if not isinstance(t, torch.Tensor) or t.ndim != 1 or len(t) < 1:
        raise ValueError("with event_fn, t must be a 1-D tensor [t0] or [t0, t1]: t0 starts the solve and "
                         "t1 - t0 sets the direction (and the search window)")
    window = float(t[1] - t[0]) if len(t) > 1 else 1.0
    if window == 0:
        raise ValueError("with event_fn, t[1] must differ from t[0]: its sign sets the direction of the search")
    search_kwargs = {**solve_kwargs, "adjoint": False}  # the search needs no gradient
    with torch.no_grad():  # search in float64 times whatever t's dtype, so that brackets can shrink far
        event_t = _locate(solve_fn, func, y0, t[0].detach().to(torch.float64), window, event_fn, search_kwargs)
    times = torch.stack([t[0], event_t.to(t.dtype)])
    grid_end = _next_grid_point(t[0], event_t, solve_kwargs)
    if grid_end is None:
        solution = solve_fn(func, y0, times, **solve_kwargs).ys
    else:  # the state at the event interpolated between grid points, as torchdiffeq's
        ys = solve_fn(func, y0, torch.cat([times, grid_end.to(t.dtype)[None]]), **solve_kwargs).ys
        solution = tuple(part[:2] for part in ys) if isinstance(ys, tuple) else ys[:2]
    return _reroute(func, event_fn, event_t.to(t.dtype), solution, y0)


def _next_grid_point(t0: torch.Tensor, event_t: torch.Tensor, solve_kwargs) -> torch.Tensor | None:
    """For a fixed grid (a FixedGrid's step_size) from t0: the first grid point past the event, or None.

    A solve that ends at the event would shorten its last step to land there, and the Adams methods'
    weights assume equal steps (a 50 % error on torchdiffeq's sine test in float32); ending on the grid
    and interpolating at the event keeps every step equal, as torchdiffeq's own event search does.
    """
    controller = solve_kwargs.get("controller")
    step = controller.step_size if isinstance(controller, FixedGrid) else None
    if step is None:
        return None
    start, event = float(t0), float(event_t)
    n_steps = math.ceil(abs(event - start) / float(step))
    end = start + math.copysign(n_steps * float(step), event - start)
    if (end - event) * (event - start) <= 0:  # the event is on the grid (or the grid cannot pass it)
        return None
    return torch.tensor(end, dtype=torch.float64)


def _sign(value) -> float:
    value = torch.as_tensor(value).detach()
    if value.numel() != 1:
        raise ValueError(f"event_fn must return a single value (its sign change is the event), got shape "
                         f"{tuple(value.shape)}; reduce it, e.g. event_fn=lambda t, y: y.sum() - 1")
    return float(torch.sign(value))


def _locate(solve_fn, func, y0, t0: torch.Tensor, window: float, event_fn, kwargs) -> torch.Tensor:
    """The first sign change of event_fn along the solution, to round-off of t's dtype."""
    start, y_start = t0, y0
    sign0 = _sign(event_fn(t0, y0))
    for _ in range(_MAX_WINDOWS):
        grid = start + torch.linspace(0.0, window, _SAMPLES_PER_WINDOW + 1, dtype=t0.dtype, device=t0.device)
        ys = solve_fn(func, y_start, grid, **kwargs).ys
        for k in range(1, len(grid)):
            state = _at(ys, k)
            value = event_fn(grid[k], state)
            if _sign(value) != sign0:
                return _refine(solve_fn, func, event_fn, kwargs, grid[k - 1], _at(ys, k - 1),
                               float(event_fn(grid[k - 1], _at(ys, k - 1))), grid[k], float(value))
        start, y_start = grid[-1], _at(ys, len(grid) - 1)
    raise RuntimeError(f"event_fn did not change sign within {_MAX_WINDOWS} windows of length {abs(window)} "
                       f"after t0 = {float(t0)}; check the event function or pass a longer t[1] - t[0]")


def _at(ys, k: int):
    return tuple(part[k] for part in ys) if isinstance(ys, tuple) else ys[k]


def _refine(solve_fn, func, event_fn, kwargs, lo, y_lo, g_lo: float, hi, g_hi: float) -> torch.Tensor:
    """Illinois regula falsi on [lo, hi]; each trial state is a solve from the left end lo."""
    eps = torch.finfo(lo.dtype).eps
    side = 0
    for _ in range(_MAX_REFINEMENTS):
        if abs(float(hi - lo)) <= 4 * eps * max(1.0, abs(float(hi))):
            break
        frac = g_lo / (g_lo - g_hi) if g_lo != g_hi else 0.5
        frac = min(max(frac, 0.01), 0.99)  # keep strictly inside so that the bracket shrinks
        mid = lo + frac * (hi - lo)
        if mid == lo or mid == hi:  # the bracket is as small as t's floating point allows
            break
        y_mid = _at(solve_fn(func, y_lo, torch.stack([lo, mid]), **kwargs).ys, 1)
        g_mid = float(event_fn(mid, y_mid))
        if g_mid == 0:
            return mid
        if _sign(g_mid) == _sign(g_lo):
            lo, y_lo, g_lo = mid, y_mid, g_mid
            g_hi = g_hi / 2 if side == 1 else g_hi  # Illinois: halve the stale end's value
            side = 1
        else:
            hi, g_hi = mid, g_mid
            g_lo = g_lo / 2 if side == -1 else g_lo
            side = -1
    return hi


def _reroute(func, event_fn, event_t: torch.Tensor, solution, y0):
    """Attach dt*/d(inputs) through the state at the event (implicit-function theorem)."""
    is_tuple = isinstance(solution, tuple)
    state_t = torch.cat([s[-1].reshape(-1) for s in solution]) if is_tuple else solution[-1]
    _, layout = flatten_state(y0)
    shape = (lambda flat: layout.split(flat)) if is_tuple else (lambda flat: flat)
    event_t, state_t = _ImplicitTime.apply(func, event_fn, shape, event_t, state_t)
    if is_tuple:
        parts = layout.split(state_t)
        return event_t, tuple(torch.cat([s[:-1], p[None]]) for s, p in zip(solution, parts))
    return event_t, torch.cat([solution[:-1], state_t[None]])


class _ImplicitTime(torch.autograd.Function):
    """Forward: identity on (t*, y(t*)). Backward: dL/dt* is sent back through y(t*) (see module docstring)."""

    @staticmethod
    def forward(ctx, func, event_fn, shape, event_t, state_t):
        ctx.func, ctx.event_fn, ctx.shape = func, event_fn, shape
        ctx.save_for_backward(event_t, state_t)
        return event_t.detach().clone(), state_t.detach().clone()

    @staticmethod
    def backward(ctx, grad_t, grad_state):
        event_t, state_t = ctx.saved_tensors
        with torch.enable_grad():
            t = event_t.detach().requires_grad_(True)
            y = state_t.detach().requires_grad_(True)
            g = ctx.event_fn(t, ctx.shape(y))
            dg_dt, dg_dy = torch.autograd.grad(g, (t, y), allow_unused=True)
        dg_dt = torch.zeros_like(t) if dg_dt is None else dg_dt
        dg_dy = torch.zeros_like(y) if dg_dy is None else dg_dy
        with torch.no_grad():
            f = ctx.func(event_t, ctx.shape(state_t))
            f = torch.cat([p.reshape(-1) for p in f]) if isinstance(f, tuple) else f
            dg_total = dg_dt + torch.sum(dg_dy * f)  # dg/dt along the solution
            grad_t = torch.zeros_like(event_t) if grad_t is None else grad_t
            grad_state = torch.zeros_like(state_t) if grad_state is None else grad_state
            # moving t* moves the reported state along f, and t* moves with the state by -dg/dy / dg_total
            weight = grad_t + torch.sum(grad_state * f)
            grad_state = grad_state - dg_dy * (weight / dg_total)
        return None, None, None, None, grad_state
