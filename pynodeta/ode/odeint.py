"""torchdiffeq-compatible front doors: change ``from torchdiffeq import odeint`` to ``from pynodeta import odeint``.

Both are thin wrappers over ``solve``; use ``solve`` directly for statistics, backends and the PI controller,
or wrap calls in ``record_stats()`` to collect the statistics of code that calls ``odeint``. torchdiffeq's
arguments (``rtol``, ``atol``, ``options``, ``adjoint_*``) live here only: ``typed_arguments`` (the
conversion behind ``SolverSettings.from_arguments``) turns them into the typed parts that ``solve`` takes.
"""

from __future__ import annotations

import torch

from .events import solve_until_event
from .settings import typed_arguments
from .solve import solve

__all__ = ["odeint", "odeint_adjoint", "odeint_event"]


def _scipy_method(options):
    """torchdiffeq's method='scipy_solver' + options['solver'] (default LSODA) as a scipy backend method."""
    options = dict(options or {})
    solver = options.pop("solver", "LSODA")
    if not isinstance(solver, str):
        raise ValueError(f"options['solver'] must be a scipy.integrate.solve_ivp method name such as 'LSODA', "
                         f"got {solver!r}")
    return solver.lower(), options


def _scipy_solver(func, y0, t, rtol, atol, options):
    """method='scipy_solver' on the 'scipy' backend. As torchdiffeq's wrapper, it returns states without
    gradient (odeint_adjoint with it gives adjoint gradients)."""
    method, options = _scipy_method(options)
    with torch.no_grad():
        settings = typed_arguments(method=method, backend="scipy", rtol=rtol, atol=atol, options=options)
        return solve(func, y0, t, **settings).ys


_STEP_OPTIONS = ("compile", "cuda_graph")


def _step_options(options) -> tuple[dict | None, dict]:
    """pynodeta's options beyond torchdiffeq's, ``options={"compile": True}`` (the compiled adaptive step of the
    torch backend) and ``options={"cuda_graph": True}`` (the step replayed as a CUDA graph), split from
    torchdiffeq's options as the ``backend_options`` they are."""
    if not options or not any(key in options for key in _STEP_OPTIONS):
        return options, {}
    options = dict(options)
    return options, {"backend_options": {key: options.pop(key) for key in _STEP_OPTIONS if key in options}}


def _refuse_scipy_events(event_fn) -> None:
    if event_fn is not None:
        raise NotImplementedError("event_fn with method='scipy_solver' is not supported (nor by torchdiffeq)")


def odeint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, event_fn=None):
    """Integrate ``dy/dt = func(t, y)`` and return the states at ``t``, as ``torchdiffeq.odeint``;
    ``options={"compile": True}`` compiles the adaptive step, ``options={"cuda_graph": True}`` replays it as
    a CUDA graph (docs/solver.md)."""
    if method == "scipy_solver":
        _refuse_scipy_events(event_fn)
        return _scipy_solver(func, y0, t, rtol, atol, options)
    options, step_options = _step_options(options)
    settings = {**typed_arguments(method=method or "dopri5", rtol=rtol, atol=atol, options=options), **step_options}
    if event_fn is not None:
        return solve_until_event(solve, func, y0, t, event_fn, **settings)
    return solve(func, y0, t, **settings).ys


def odeint_adjoint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, event_fn=None,
                   adjoint_rtol=None, adjoint_atol=None, adjoint_method=None, adjoint_options=None,
                   adjoint_params=None):
    """As ``odeint`` but differentiated by the adjoint method, as ``torchdiffeq.odeint_adjoint``;
    ``options={"compile": True}`` compiles the forward solve's adaptive step, ``{"cuda_graph": True}`` replays
    it as a CUDA graph."""
    backend = "torch"
    options, step_options = _step_options(options) if method != "scipy_solver" else (options, {})
    if "scipy_solver" in (method, adjoint_method):
        _refuse_scipy_events(event_fn)
        if adjoint_method not in (None, method):
            raise ValueError("method='scipy_solver' runs forward and backward on SciPy: adjoint_method must be "
                             "None or 'scipy_solver' too")
        method, options = _scipy_method(options)
        adjoint_method, adjoint_options = (None, None) if adjoint_options is None else _scipy_method(adjoint_options)
        backend = "scipy"
    settings = typed_arguments(
        method=method or "dopri5", rtol=rtol, atol=atol, options=options, adjoint=True, backend=backend,
        adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
        adjoint_options=adjoint_options, adjoint_params=adjoint_params)
    settings.update(step_options)
    if event_fn is not None:
        return solve_until_event(solve, func, y0, t, event_fn, **settings)
    return solve(func, y0, t, **settings).ys


def odeint_event(func, y0, t0, *, event_fn, reverse_time=False, odeint_interface=odeint, **kwargs):
    """Solve from ``t0`` until ``event_fn(t, y)`` changes sign; return ``(event_t, solution)`` with
    ``solution`` the states at ``[t0, event_t]``, as ``torchdiffeq.odeint_event``. Gradients flow through
    the event time (implicit-function theorem), with ``odeint_interface=odeint_adjoint`` too."""
    t0 = torch.as_tensor(t0).reshape(-1)
    t = torch.cat([t0, t0.detach() + (-1.0 if reverse_time else 1.0)])
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
