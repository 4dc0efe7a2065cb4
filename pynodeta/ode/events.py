"""Terminal events, as torchdiffeq 0.2.5's ``odeint(..., event_fn=...)`` and ``odeint_event``.

The solve stops where ``event_fn(t, y)`` first changes sign. The event is located without gradient: the
solution is sampled densely window by window (each window one solve, its outputs from the dense output), and
the bracketing interval is refined by the Illinois variant of regula falsi on the bracket's continuous
solution: one solve over the bracket from its left end that keeps its steps (``dense_solve``, usually a
single step), whose dense output gives each trial point's state without evaluating func. On other backends
than torch, whose solvers keep no steps, each trial point is one short solve from the bracket's left end
instead. On a fixed grid (``step_size``, which an event then needs, as in torchdiffeq) the solution is the
grid's states and the method's interpolation between them, and the search keeps to exactly that: it reads
the states at the grid points of a solve from ``t0``, then narrows the step where the sign changes with
solves that return that step's interpolation (a restart from an interpolated state would follow another
trajectory, off by the interpolation's error, and the state reported at the event would miss it). Gradients
then come from one differentiable solve from ``t0`` to the (detached) event time, direct or adjoint, with
the event time's own dependence on the inputs added by the implicit-function theorem: ``g(t*, y(t*)) = 0``
gives ``dt* = -(dg/dy . dy) / (dg/dt + dg/dy . f(t*, y(t*)))`` (Chen, Amos & Nickel 2021, eq. 6; the same
rerouting as torchdiffeq's ``ImplicitFnGradientRerouting``).

The windows of an adaptive search start at the caller's length (``t[1] - t[0]``, 1 for ``odeint_event``)
and double over quiet stretches while their 32 samples stay at least one per accepted step of the solver,
so that a late event costs a few solves and a grown window is no coarser than torchdiffeq's check at the
end of each of its steps (windows of the caller's length are sampled as before, however many steps they
take). Each window's last step lands on its end, and the next window's solve goes on from that step's
state, its first step the last window's mean accepted step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from .adams import ADAMS_METHODS
from .dense import dense_solve
from .errors import ODESolveError
from .methods import METHODS, Method
from .settings import FixedGrid, IController
from .validation import flatten_state

__all__ = ["solve_until_event"]

_SAMPLES_PER_WINDOW = 32
_MAX_WINDOWS = 10_000  # windows without a sign change (never shorter than the caller's: as far as before, or further)
_MAX_REFINEMENTS = 100
_MAX_GRID_STEPS = 1 << 22  # the most fixed-grid steps searched from t0


def solve_until_event(solve_fn: Callable[..., Any], func, y0, t: torch.Tensor, event_fn, **solve_kwargs):
    """(event_t, solution at [t0, event_t]) as torchdiffeq returns them; ``solve_fn`` is ``solve``."""
    if not callable(event_fn):
        raise TypeError(f"event_fn must be callable as event_fn(t, y) -> scalar tensor, got {event_fn!r}")
    if not isinstance(t, torch.Tensor) or t.ndim != 1 or not 1 <= len(t) <= 2:
        raise ValueError("with event_fn, t must be a 1-D tensor [t0] or [t0, t1]: t0 starts the solve and "
                         "t1 - t0 sets the direction (and the search window)"
                         + ("" if not isinstance(t, torch.Tensor) or t.ndim != 1 or len(t) < 3 else
                            f"; got {len(t)} times, and the solve ends at the event, not at later times"))
    window = float(t[1].detach() - t[0].detach()) if len(t) > 1 else 1.0
    if window == 0:
        raise ValueError("with event_fn, t[1] must differ from t[0]: its sign sets the direction of the search")
    grid = _fixed_grid_step(solve_kwargs)
    search_kwargs = {**solve_kwargs, "adjoint": False}  # the search needs no gradient
    with torch.no_grad():  # search in float64 times whatever t's dtype, so that brackets can shrink far
        t0 = t[0].detach().to(torch.float64)
        if grid is None:
            event_t = _locate(solve_fn, func, y0, t0, window, event_fn, search_kwargs)
        else:
            event_t = _locate_on_grid(solve_fn, func, y0, t0, math.copysign(grid, window), event_fn,
                                      search_kwargs)
    times = torch.stack([t[0], event_t.to(t.dtype)])
    grid_end = _next_grid_point(t[0], event_t, solve_kwargs)
    if grid_end is None:
        solution = solve_fn(func, y0, times, **solve_kwargs).ys
    else:  # the state at the event interpolated between grid points, as torchdiffeq's
        ys = solve_fn(func, y0, torch.cat([times, grid_end.to(t.dtype)[None]]), **solve_kwargs).ys
        solution = tuple(part[:2] for part in ys) if isinstance(ys, tuple) else ys[:2]
    return _reroute(func, event_fn, event_t.to(t.dtype), solution, y0)


def _fixed_grid_step(solve_kwargs) -> float | None:
    """A fixed grid's step_size (None for adaptive methods); a fixed grid without one is refused."""
    controller = solve_kwargs.get("controller")
    if not isinstance(controller, FixedGrid):
        return None
    if controller.grid_constructor is not None or controller.step_size is None:
        raise ValueError("with event_fn, a fixed-grid method needs options={'step_size': ...} (and no "
                         "grid_constructor): the event is searched along the grid of that step from t0, as "
                         "torchdiffeq's fixed-grid event search does")
    return float(controller.step_size)


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
    """The first sign change of event_fn along the solution, to round-off of t's dtype.

    Each window is one solve sampled at 32 points. The first has the caller's length (``window``, signed).
    After a window without a sign change whose solve took at most 16 accepted steps, the next is twice as
    long: its samples are then still at least one per accepted step (on average), no coarser than a check
    at the end of each of the solver's steps (torchdiffeq's search), and a quiet stretch costs a few solves
    however long it is. A grown window whose solve took more accepted steps than it has samples is searched
    again, shorter, but never shorter than the caller's: the search gives up no nearer than _MAX_WINDOWS of
    the caller's windows, where it gave up before windows grew. Windows go on as one solve would
    (``_window_settings``).
    """
    start, y_start = t0, y0
    sign0 = _sign(event_fn(t0, y0))
    length, step, may_grow = window, None, True
    searched = 0
    while searched < _MAX_WINDOWS:
        grid = _window_times(t0, start, length, window)
        try:
            solution = solve_fn(func, y_start, grid, **_window_settings(kwargs, step, grid))
        except ODESolveError:
            if abs(length) == abs(window):
                raise
            # a long window may overshoot the event into dynamics not defined there: search on in windows
            # of the caller's length, which reach no further past the event than the search did before
            length, may_grow = window, False
            continue
        accepted = max(solution.stats.n_accepted, 1)
        if accepted > _SAMPLES_PER_WINDOW and abs(length) > abs(window):
            length = _fitted(length, accepted, window)
            continue
        ys = solution.ys
        for k in range(1, len(grid)):
            state = _at(ys, k)
            value = event_fn(grid[k], state)
            if _sign(value) != sign0:
                return _refine(solve_fn, func, event_fn, kwargs, grid[k - 1], _at(ys, k - 1),
                               float(event_fn(grid[k - 1], _at(ys, k - 1))), grid[k], float(value),
                               abs(length) / accepted)
        searched += 1
        start, y_start, step = grid[-1], _at(ys, len(grid) - 1), abs(length) / accepted
        if may_grow and 2 * accepted <= _SAMPLES_PER_WINDOW:
            length = 2 * length
    raise RuntimeError(_no_sign_change(t0, start, window, f"{_MAX_WINDOWS} windows searched; check the event "
                                       f"function, or start from longer windows: odeint(func, y0, "
                                       f"torch.stack([t0, t0 + T]), event_fn=...) starts at length |T| "
                                       f"(odeint_event's at 1)"))


def _window_times(t0: torch.Tensor, start: torch.Tensor, length: float, window: float) -> torch.Tensor:
    """The window's sample times; a window that would pass float64's range ends the search."""
    grid = start + torch.linspace(0.0, length, _SAMPLES_PER_WINDOW + 1, dtype=t0.dtype, device=t0.device)
    if not bool(torch.isfinite(grid).all()):
        raise RuntimeError(_no_sign_change(t0, start, window, "the next window would pass float64's range, so "
                                           "there is no further to search; check the event function"))
    return grid


def _window_settings(kwargs, step: float | None, grid: torch.Tensor) -> dict:
    """A window's solve settings, so that the windows go on as one solve would. Its last step lands on the
    window's end (a step_t there): the next window starts from a step's own state, not from an interpolated
    one, whose error (from a step far past the end) the next window would carry on. And its first step is
    the last window's mean accepted step (``step``, None for the first window): a fresh automatic first
    step (1e-6 where the state barely moves) would ramp up again in every window, its steps holding back
    the growth of windows, and at large t would no longer move t at all."""
    controller = kwargs.get("controller")
    if not isinstance(controller, IController):
        return kwargs
    end, length = float(grid[-1]), abs(float(grid[-1] - grid[0]))
    first_step = controller.first_step if step is None else min(step, length)
    return {**kwargs, "controller": dataclasses.replace(controller, first_step=first_step,
                                                        step_t=(*controller.step_t, end))}


def _fitted(length: float, accepted: int, window: float) -> float:
    """A grown window, halved until its solve's accepted steps, as dense, would fit its samples (never
    shorter than the caller's window)."""
    while accepted > _SAMPLES_PER_WINDOW and abs(length) > abs(window):
        length, accepted = length / 2, accepted / 2
    return length


def _no_sign_change(t0: torch.Tensor, reached: torch.Tensor, window: float, why: str) -> str:
    """The message of a search that ends without a sign change, at ``reached``, for the reason ``why``."""
    return (f"event_fn did not change sign from t0 = {float(t0)} to t = {float(reached)}, searched in windows "
            f"from length {abs(window)}, doubled while the solver took at most {_SAMPLES_PER_WINDOW // 2} "
            f"steps in one: {why}")


def _grid_times(t0: float, step: float, first: int, last: int) -> list[float]:
    """Grid points t0 + i * step for i in [first, last], computed as the fixed-grid solver computes its grid
    (in the solve's forward time s = direction * t: s0 + i * |step|), so that outputs fall on its points."""
    direction = math.copysign(1.0, step)
    return [direction * (direction * t0 + i * abs(step)) for i in range(first, last + 1)]


def _locate_on_grid(solve_fn, func, y0, t0: torch.Tensor, step: float, event_fn, kwargs) -> torch.Tensor:
    """The first sign change of event_fn along the fixed-grid solution from t0 (signed ``step``), to
    round-off of t's dtype: its states at the grid points, then the method's interpolation in the step
    where the sign changes. A one-step method goes 32 steps at a time from the last grid point (its steps
    from there are the solution's own); a multistep (Adams) method's steps depend on its history, so each
    of its searches solves from t0, each a quarter further than the last (or 32 steps), which is as far as
    it may go past the event (where the dynamics may no longer be defined)."""
    start, dtype, device = float(t0), t0.dtype, t0.device
    sign0 = _sign(event_fn(t0, y0))
    one_step = _one_step(kwargs)
    first, y_first, checked = 0, y0, 0
    while checked < _MAX_GRID_STEPS:
        last = checked + (_SAMPLES_PER_WINDOW if one_step else max(_SAMPLES_PER_WINDOW, checked // 4))
        times = torch.tensor(_grid_times(start, step, first, last), dtype=dtype, device=device)
        ys = solve_fn(func, y_first, times, **kwargs).ys
        for k in range(checked + 1, last + 1):
            if _sign(event_fn(times[k - first], _at(ys, k - first))) != sign0:
                return _narrow_grid_step(solve_fn, func, y0, t0, step, k - 1, _at(ys, k - 1 - first), event_fn,
                                         sign0, one_step, kwargs)
        checked = last
        if one_step:
            first, y_first = last, _at(ys, last - first)
    raise RuntimeError(f"event_fn did not change sign within {_MAX_GRID_STEPS} steps of step_size {abs(step)} "
                       f"after t0 = {start}; check the event function, or take a larger step_size")


def _one_step(kwargs) -> bool:
    """Whether the method's step from a grid point depends on that point's state alone (not an Adams method's
    history; other backends are treated as if it did)."""
    method = kwargs.get("method")
    return kwargs.get("backend", "torch") == "torch" and not (isinstance(method, str) and method in ADAMS_METHODS)


def _narrow_grid_step(solve_fn, func, y0, t0: torch.Tensor, step: float, k: int, y_k, event_fn, sign0: float,
                      one_step: bool, kwargs) -> torch.Tensor:
    """The sign change inside grid step k (from grid point k, state y_k), on the method's interpolation:
    each round samples the bracket at 32 points by one solve that returns the step's interpolated states,
    and keeps the sub-interval where the sign changes; a one-step method's solves start at (t_k, y_k), a
    multistep method's at t0."""
    start = float(t0)
    lo, hi = _grid_times(start, step, k, k + 1)
    first, y_first = (lo, y_k) if one_step else (start, y0)
    eps = torch.finfo(torch.float64).eps
    while abs(hi - lo) > 4 * eps * max(1.0, abs(hi)):
        inside = sorted({lo + (hi - lo) * j / _SAMPLES_PER_WINDOW for j in range(1, _SAMPLES_PER_WINDOW)} - {lo, hi},
                        reverse=step < 0)
        if not inside:  # the bracket is as small as float64 allows
            break
        outputs = [first, *inside] if first == lo else [first, lo, *inside]
        times = torch.tensor([*outputs, _grid_times(start, step, k + 1, k + 1)[0]], dtype=t0.dtype, device=t0.device)
        ys = solve_fn(func, y_first, times, **kwargs).ys
        offset = len(outputs) - len(inside)
        new_lo, new_hi = inside[-1], hi
        for j, time in enumerate(inside):
            if _sign(event_fn(times[offset + j], _at(ys, offset + j))) != sign0:
                new_lo, new_hi = (inside[j - 1] if j else lo), time
                break
        lo, hi = new_lo, new_hi
    return torch.tensor(hi, dtype=t0.dtype, device=t0.device)


def _at(ys, k: int):
    return tuple(part[k] for part in ys) if isinstance(ys, tuple) else ys[k]


def _refine(solve_fn, func, event_fn, kwargs, lo, y_lo, g_lo: float, hi, g_hi: float, step: float) -> torch.Tensor:
    """The sign change in the bracket [lo, hi] of an adaptive search, by Illinois regula falsi, to round-off;
    ``step`` is the mean accepted step of the window that holds the bracket."""
    dense = _bracket_solution(func, y_lo, lo, hi, step, kwargs)
    if dense is not None:
        return _illinois(event_fn, lo, y_lo, g_lo, hi, g_hi, lambda lo, y_lo, mid: dense(mid))
    # no dense output: each trial state is a solve from the bracket's current left end
    return _illinois(event_fn, lo, y_lo, g_lo, hi, g_hi,
                     lambda lo, y_lo, mid: _at(solve_fn(func, y_lo, torch.stack([lo, mid]), **kwargs).ys, 1))


def _bracket_solution(func, y_lo, lo: torch.Tensor, hi: torch.Tensor, step: float, kwargs):
    """The bracket's continuous solution: one solve from (lo, y_lo) to hi that keeps its steps, so that the
    trial points cost no evaluation of func. It goes on as the window's solve (``_window_settings``): its
    first step is the window's mean step, which spans the bracket when the window's samples are at least
    one per step, and its last step lands on hi, so func is not evaluated past the bracket. Its steps are
    eager whatever ``backend_options`` ask (a step or two gain nothing from being compiled or replayed as a
    graph). None where the search's solves keep no steps: on other backends than torch (scipy's and julia's
    solvers step outside torch)."""
    method = kwargs.get("method", "dopri5")
    method = METHODS.get(method) if isinstance(method, str) else method
    if kwargs.get("backend", "torch") != "torch" or not isinstance(method, Method) or not method.adaptive:
        return None
    controller = _window_settings(kwargs, step, torch.stack([lo, hi]))["controller"]
    return dense_solve(func, y_lo, lo, hi, method=method, controller=controller, max_steps=kwargs.get("max_steps"),
                       warn_after_steps=kwargs.get("warn_after_steps", 100_000))


def _illinois(event_fn, lo, y_lo, g_lo: float, hi, g_hi: float, state_at) -> torch.Tensor:
    """Illinois regula falsi on [lo, hi] to round-off of lo's dtype; ``state_at(lo, y_lo, mid)`` is the state
    at a trial point ``mid`` inside the bracket [lo, hi] whose left end's state is ``y_lo``."""
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
        y_mid = state_at(lo, y_lo, mid)
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
