"""torchdiffeq-compatible front doors: change ``from torchdiffeq import odeint`` to ``from pynodeta import odeint``.

Both are thin wrappers over ``solve``; use ``solve`` directly for statistics, backends and the PI controller,
or wrap calls in ``record_stats()`` to collect the statistics of code that calls ``odeint``.
"""

from __future__ import annotations

from .solve import solve

__all__ = ["odeint", "odeint_adjoint"]


def _no_events(event_fn) -> None:
    if event_fn is not None:
        raise NotImplementedError("event_fn (terminating events) is not supported yet by pynodeta; "
                                  "integrate to a fixed time or use torchdiffeq.odeint_event")


def odeint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, event_fn=None):
    """Integrate ``dy/dt = func(t, y)`` and return the states at ``t``, as ``torchdiffeq.odeint``."""
    _no_events(event_fn)
    return solve(func, y0, t, method=method or "dopri5", rtol=rtol, atol=atol, options=options).ys


def odeint_adjoint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, event_fn=None,
                   adjoint_rtol=None, adjoint_atol=None, adjoint_method=None, adjoint_options=None,
                   adjoint_params=None):
    """As ``odeint`` but differentiated by the adjoint method, as ``torchdiffeq.odeint_adjoint``."""
    _no_events(event_fn)
    return solve(
        func, y0, t, method=method or "dopri5", rtol=rtol, atol=atol, options=options, adjoint=True,
        adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
        adjoint_options=adjoint_options, adjoint_params=adjoint_params,
    ).ys
