"""The solver's typed parts: step-size controllers, the fixed grid and the adjoint, as frozen dataclasses.

Each part checks its own fields when it is built, so a bad value fails where it is written (a config
file, a constructor call) with a message naming the field, not deep inside a solve. They are plain
dataclasses of numbers and strings, so jsonargparse reads them from YAML as typed fields.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["IController", "PIController", "FixedGrid", "Adjoint", "Controller", "SolverSettings"]

Tolerance = float | tuple[float, ...]
"""A tolerance: one number, or one per part of a tuple state (a per-element tensor is also accepted)."""


def _require(ok: bool, field: str, value: Any, rule: str) -> None:
    if not ok:
        raise ValueError(f"{field} must be {rule}, got {value!r}")


def _require_number(field: str, value: Any, optional: bool = False) -> None:
    """A TypeError naming the field before a comparison with a string (say) fails without naming it."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{field} must be a number{' or None' if optional else ''}, got {value!r} of type "
                        f"{type(value).__name__}")


def _require_integer(field: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{field} must be an int{' or None' if optional else ''}, got {value!r} of type "
                        f"{type(value).__name__}")


def _check_tolerance(field: str, value: Any) -> None:
    """Scalar and per-part tolerances are checked here; tensors are checked against the state in solve."""
    if isinstance(value, torch.Tensor):
        return
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise TypeError(f"{field} must be a number (or one number per part of a tuple state), got {value!r}")
        _require(math.isfinite(v) and v >= 0, field, value, ">= 0 and finite")


def _check_tolerances(rtol: Any, atol: Any) -> None:
    """Each >= 0, and not both 0 (the error's scale atol + rtol * |y| would be 0)."""
    _check_tolerance("rtol", rtol)
    _check_tolerance("atol", atol)
    if isinstance(rtol, torch.Tensor) or isinstance(atol, torch.Tensor):
        return  # checked element by element against the state in solve
    pairs = zip(*(v if isinstance(v, (tuple, list)) else (v,) * _parts(rtol, atol) for v in (rtol, atol)))
    if any(r == 0 and a == 0 for r, a in pairs):
        raise ValueError("rtol and atol are both 0: the error is measured against atol + rtol * |y|, which is then "
                         "0; set one of them > 0")


def _parts(*values: Any) -> int:
    return max((len(v) for v in values if isinstance(v, (tuple, list))), default=1)


@dataclass(frozen=True)
class IController:
    """Adaptive steps with the integral controller (torchdiffeq's rule and defaults).

    A step is accepted when ``norm(error / (atol + rtol * max(|y0|, |y1|))) <= 1``; the next step is
    ``dt * clip(safety * ratio^(-1/k), dfactor, ifactor)`` (k the method's error order; accepted steps
    never shrink), Hairer, Norsett & Wanner I, Sec. II.4.

    Attributes:
        rtol, atol: relative and absolute tolerances (>= 0, not both 0; 0 makes the other one the only one).
        safety: in (0, 1]; the fraction of the optimal step taken.
        ifactor: >= 1; largest growth of the step in one go.
        dfactor: in (0, 1]; largest shrink of a rejected step in one go.
        norm: norm of the scaled error (a callable on the state, a tuple for tuple states);
            None: RMS over the whole state (the mixed RMS per part for tuple states).
        first_step: the first step's size (> 0), or None for Hairer's automatic choice.
        min_step, max_step: bounds on the step size, 0 <= min_step <= max_step (max_step may be inf).
        step_t: times every solve must step on (torchdiffeq's option), e.g. where func changes character.
        jump_t: times where func jumps (torchdiffeq's option): steps end there and the next one starts
            from func evaluated just after the jump, so no step straddles a discontinuity.
    """

    rtol: Tolerance = 1e-7
    atol: Tolerance = 1e-9
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    norm: Callable[..., torch.Tensor] | None = None
    first_step: float | None = None
    min_step: float = 0.0
    max_step: float = math.inf
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("safety", "ifactor", "dfactor", "min_step", "max_step"):
            _require_number(name, getattr(self, name))
        _require_number("first_step", self.first_step, optional=True)
        for name in ("step_t", "jump_t"):
            times = getattr(self, name)
            ok = isinstance(times, tuple) and all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                                  for v in times)
            _require(ok and all(math.isfinite(v) for v in times), name, times,
                     "a tuple of finite times (options accept a tensor or list)")
        _check_tolerances(self.rtol, self.atol)
        _require(0 < self.safety <= 1, "safety", self.safety, "in (0, 1] (e.g. 0.9)")
        _require(1 <= self.ifactor < math.inf, "ifactor", self.ifactor, ">= 1 and finite (e.g. 10)")
        _require(0 < self.dfactor <= 1, "dfactor", self.dfactor, "in (0, 1] (e.g. 0.2)")
        _require(self.norm is None or callable(self.norm), "norm", self.norm,
                 "None or a callable (state -> scalar tensor); 'seminorm' is an Adjoint(norm=...) setting")
        if self.first_step is not None:
            _require(0 < self.first_step < math.inf, "first_step", self.first_step, "> 0 and finite, or None")
        _require(0 <= self.min_step < math.inf, "min_step", self.min_step, ">= 0 and finite")
        _require(self.max_step > 0, "max_step", self.max_step, "> 0 (inf: no bound)")
        _require(self.min_step <= self.max_step, "min_step", self.min_step,
                 f"<= max_step ({self.max_step}); lower min_step or raise max_step")

    @property
    def kind(self) -> str:
        return "i"

    @property
    def gains(self) -> tuple[float, float]:
        """(alpha, beta) of ``ratio^(-alpha/k) * previous_ratio^(beta/k)``; the I controller is (1, 0)."""
        return (1.0, 0.0)


@dataclass(frozen=True)
class PIController(IController):
    """Adaptive steps with a proportional-integral controller (Gustafsson; Hairer & Wanner II, Sec. IV.2).

    On acceptance ``factor = safety * ratio^(-alpha/k) * previous_ratio^(beta/k)`` with
    ``(alpha, beta) = gains``; it damps the step-size oscillations of the I controller at the stability
    boundary. A rejected step falls back to the I rule. Other fields as ``IController``.
    """

    # a dataclass field shadows IController's read-only property of the same name
    gains: tuple[float, float] = (0.7, 0.4)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = len(tuple(self.gains)) == 2 and all(isinstance(g, (int, float)) and math.isfinite(g) for g in self.gains)
        _require(ok and self.gains[0] > 0, "gains", self.gains, "two finite numbers (alpha > 0, beta), e.g. (0.7, 0.4)")

    @property
    def kind(self) -> str:
        return "pi"


@dataclass(frozen=True)
class FixedGrid:
    """Fixed steps (euler, midpoint, rk4, ...).

    Attributes:
        step_size: the grid spacing (> 0); None steps from one output time to the next.
        interpolation: how outputs between grid points are formed: "linear" (torchdiffeq's) or "cubic"
            (Hermite through the neighbouring grid points and their derivatives).
        perturb: evaluate func one ulp inside each step at its ends (torchdiffeq's option), so that a
            discontinuity at a grid point is seen from the side of the step being taken.
        grid_constructor: ``(func, y0, t) -> grid``, torchdiffeq's option: a 1-D tensor of step points
            from t[0] to t[-1] (in t's direction); overrides step_size.
        rtol, atol, max_iters: the Adams methods' corrector (torchdiffeq's): functional iteration stops when
            ``max |dy_new - dy_old| / (atol + rtol max(|dy_old|, |dy_new|)) < 1`` or after max_iters
            evaluations; other methods ignore them.
        max_order: the Adams methods' highest order, 2 to 12 (below 4 they reduce to rk4).
    """

    step_size: float | None = None
    interpolation: str = "linear"
    perturb: bool = False
    grid_constructor: Callable[..., torch.Tensor] | None = None
    rtol: Tolerance = 1e-7
    atol: Tolerance = 1e-9
    max_iters: int = 4
    max_order: int = 12

    def __post_init__(self) -> None:
        _require_number("step_size", self.step_size, optional=True)
        _require_integer("max_iters", self.max_iters)
        _require_integer("max_order", self.max_order)
        if self.step_size is not None:
            _require(0 < self.step_size < math.inf, "step_size", self.step_size, "> 0 and finite, or None")
        _require(self.interpolation in ("linear", "cubic"), "interpolation", self.interpolation,
                 "'linear' or 'cubic'")
        _require(isinstance(self.perturb, bool), "perturb", self.perturb, "True or False")
        _require(self.grid_constructor is None or callable(self.grid_constructor), "grid_constructor",
                 self.grid_constructor, "a callable (func, y0, t) -> grid, or None")
        _check_tolerances(self.rtol, self.atol)
        _require(isinstance(self.max_iters, int) and self.max_iters >= 1, "max_iters", self.max_iters, "an int >= 1")
        _require(isinstance(self.max_order, int) and 2 <= self.max_order <= 12, "max_order", self.max_order,
                 "an int in [2, 12] (torchdiffeq's range; it fails below 2)")


Controller = IController | PIController | FixedGrid


@dataclass(frozen=True)
class Adjoint:
    """Gradients by the adjoint method: solve the augmented system backwards (O(1) memory in steps).

    Attributes:
        method: the backward solve's method; None: the forward one.
        controller: the backward solve's controller; None: the forward one (whose tolerances must
            then be scalars, and whose custom ``norm`` is not reused: see ``norm``).
        norm: error norm of the backward solve: "mixed" (the largest RMS over the parts
            t-adjoint / y / dL/dy / dL/dparams, torchdiffeq's), "seminorm" (leaves dL/dparams out of the
            error control, Kidger et al. 2021: usually far fewer backward steps), or a callable taking
            the tuple of those parts.
        params: the tensors to differentiate; None: ``func.parameters()`` (func must be an nn.Module).
        max_steps: step limit of the backward solve; None: the forward one.
    """

    method: Any = None  # str | Method | None (annotated loosely so configs can hold a name)
    controller: Controller | None = None
    norm: str | Callable[..., torch.Tensor] = "mixed"
    params: Sequence[torch.Tensor] | None = None
    max_steps: int | None = None

    def __post_init__(self) -> None:
        _require(self.norm in ("mixed", "seminorm") or callable(self.norm), "norm", self.norm,
                 "'mixed', 'seminorm' or a callable")
        if self.controller is not None and not isinstance(self.controller, (IController, FixedGrid)):
            raise TypeError(f"controller must be an IController, PIController, FixedGrid or None, "
                            f"got {type(self.controller).__name__}")
        _require_integer("max_steps", self.max_steps, optional=True)
        if self.max_steps is not None:
            _require(self.max_steps >= 1, "max_steps", self.max_steps, "an int >= 1, or None")


@dataclass(frozen=True)
class SolverSettings:
    """Everything that says how to solve, declared and validated once: ``solve(func, y0, t, **settings)``.

    Attributes:
        method: a method name of the backend (see ``pynodeta.METHODS`` for the torch backend) or a
            ``Method`` (e.g. ``Method.from_tableau(...)``, torch backend only).
        controller: ``IController``/``PIController`` (adaptive methods) or ``FixedGrid`` (fixed-grid
            methods); None: the method's default (``IController()`` or ``FixedGrid()``).
        adjoint: False (backprop through the solver), True or an ``Adjoint`` (the adjoint method).
        backend: "torch", "scipy" or "julia".
        max_steps: limit on attempted steps; None: unlimited (torchdiffeq's default).
        warn_after_steps: warn once, with t and dt, when a solve takes more steps than this.
        backend_options: options only one backend understands (e.g. ``{"jacobian": "finite-difference"}``).
        batched: per-sample step sizes (``solve(..., batched=True)``): each row of y0 is its own problem;
            adaptive Runge-Kutta methods on the torch backend only.
    """

    method: Any = "dopri5"  # str | Method (annotated loosely so configs can hold a name)
    controller: Controller | None = None
    adjoint: bool | Adjoint = False
    backend: str = "torch"
    max_steps: int | None = None
    warn_after_steps: int | None = 100_000
    backend_options: dict[str, Any] | None = None
    batched: bool = False

    def __post_init__(self) -> None:
        from .parts import check_parts  # the method/backend checks live with solve's

        backend = check_parts(self.method, self.controller, self.adjoint, self.backend, self.max_steps,
                              self.warn_after_steps)
        _require(isinstance(self.batched, bool), "batched", self.batched, "True or False")
        if self.batched:
            from .batched.solve import check_batched_parts

            check_batched_parts(self.method, self.controller, self.adjoint, backend)
            _require(not self.backend_options, "backend_options", self.backend_options, "empty with batched=True")

    @classmethod
    def from_arguments(cls, **arguments: Any) -> SolverSettings:
        """The bundle for ``solve``'s keyword arguments, sugar included (``rtol=``, ``options=``, ...):
        ``SolverSettings.from_arguments(method="rk4", options={"step_size": 0.1})``."""
        return cls(**typed_arguments(**arguments))

    def keys(self) -> tuple[str, ...]:
        """The argument names of ``solve`` this bundle sets, so that ``solve(..., **settings)`` works."""
        return ("method", "controller", "adjoint", "backend", "max_steps", "warn_after_steps",
                "backend_options", "batched")

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)


def typed_arguments(**arguments: Any) -> dict[str, Any]:
    """``solve``'s keyword arguments with torchdiffeq's sugar (``rtol=``, ``options=``, ``adjoint_*=``,
    ``controller="pi"``) turned into typed parts: the one conversion, behind ``SolverSettings.from_arguments``
    and ``odeint``, which calls it directly to spare a hot, short solve the bundle's second validation."""
    from .backends import get_backend
    from .parts import typed_parts

    names = ("method", "controller", "adjoint", "backend", "max_steps")
    typed = {"method": "dopri5", "controller": None, "adjoint": False, "backend": "torch", "max_steps": None}
    typed.update({k: arguments.pop(k) for k in names if k in arguments})
    kept = {k: arguments.pop(k) for k in ("warn_after_steps", "backend_options", "batched") if k in arguments}
    parts = typed_parts(get_backend(typed["backend"]), typed["method"], typed["controller"], typed["adjoint"],
                        typed["max_steps"], **arguments)
    backend = typed["backend"]
    return {"method": parts.method, "controller": parts.controller, "adjoint": parts.adjoint or False,
            "backend": backend if isinstance(backend, str) else backend.name, "max_steps": parts.max_steps, **kept}
