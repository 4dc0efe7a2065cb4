"""Step callbacks read from ``func``, as torchdiffeq 0.2.5 defines them.

``func.callback_step(t0, y0, dt)`` runs before every attempted step, ``func.callback_accept_step`` and
``func.callback_reject_step`` after its accept/reject decision (adaptive methods only). The ``_adjoint``
forms run during the adjoint's backward solve, on the augmented state ``(t-adjoint, y, dL/dy, *dL/dparams)``.
``t0`` is the caller's time (not the solver's internal reversed time), ``dt`` the step's magnitude, both
0-d float64 tensors; ``y0`` is shaped as the caller shaped the state (a tuple for a tuple state).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["CALLBACK_NAMES", "StepCallbacks", "find_callbacks", "warn_unsupported_callbacks"]

CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
ADAPTIVE_ONLY = frozenset({"callback_accept_step", "callback_reject_step"})

Callback = Callable[[torch.Tensor, object, torch.Tensor], object]


@dataclass(frozen=True)
class StepCallbacks:
    """The callbacks a backend calls: each takes (caller's time t0, flat state, step magnitude dt) as floats
    and a tensor, and converts them to torchdiffeq's argument types only when a callback is present."""

    step: Callback | None = None
    accept: Callback | None = None
    reject: Callback | None = None
    shape_state: Callable[[torch.Tensor], object] | None = None  # flat state -> the caller's layout

    def _call(self, callback: Callback | None, t0: float, y0: torch.Tensor, dt: float) -> None:
        if callback is None:
            return
        y = y0 if self.shape_state is None else self.shape_state(y0)
        callback(torch.tensor(t0, dtype=torch.float64), y, torch.tensor(dt, dtype=torch.float64))

    def on_step(self, t0: float, y0: torch.Tensor, dt: float) -> None:
        self._call(self.step, t0, y0, dt)

    def on_accept(self, t0: float, y0: torch.Tensor, dt: float) -> None:
        self._call(self.accept, t0, y0, dt)

    def on_reject(self, t0: float, y0: torch.Tensor, dt: float) -> None:
        self._call(self.reject, t0, y0, dt)


def find_callbacks(func: object, *, adjoint: bool = False,
                   shape_state: Callable[[torch.Tensor], object] | None = None) -> StepCallbacks | None:
    """The callbacks defined on ``func`` (the ``_adjoint`` forms when ``adjoint``), or None if it has none."""
    suffix = "_adjoint" if adjoint else ""
    found = [getattr(func, name + suffix, None) for name in CALLBACK_NAMES]
    for name, callback in zip(CALLBACK_NAMES, found):
        if callback is not None and not callable(callback):
            raise TypeError(f"func.{name}{suffix} must be callable as (t0, y0, dt), got {callback!r}")
    if all(c is None for c in found):
        return None
    return StepCallbacks(*found, shape_state=shape_state)


def warn_unsupported_callbacks(func: object, method: str, adaptive: bool, native: bool) -> None:
    """Warn, as torchdiffeq does, about callbacks on func that ``method`` never calls."""
    names = {name for name in CALLBACK_NAMES if getattr(func, name, None) is not None}
    if not native:
        unsupported = names
    elif not adaptive:
        unsupported = names & ADAPTIVE_ONLY
    else:
        unsupported = set()
    if unsupported:
        warnings.warn(f"method {method!r} does not call the callbacks {sorted(unsupported)} defined on func "
                      f"({'it has no accept/reject decision' if native else 'the backend steps outside torch'})",
                      stacklevel=3)
