"""From what the caller wrote to what a backend runs, in one place.

``typed_parts`` turns torchdiffeq-style sugar (``rtol=``, ``atol=``, ``options=``, ``controller="pi"``,
``adjoint_rtol=`` ...) into the typed parts of ``settings.py``; ``check_parts`` validates typed parts
against the method and backend; ``solver_config`` and ``adjoint_config`` lower them to the
``SolverConfig`` a backend reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .adams import ADAMS_METHODS
from .backends import Backend, SolverConfig, get_backend
from .methods import Method
from .norms import StateNorm
from .settings import Adjoint, Controller, FixedGrid, IController, PIController
from .validation import StateStructure, check_options, check_tolerance, check_tolerance_pair

__all__ = ["Parts", "typed_parts", "check_parts", "method_name", "solver_config", "adjoint_config",
           "refuse_torchdiffeq_spellings"]

_UNLIMITED_STEPS = 2**31 - 1
# option keys that belong to a controller; with a typed controller they must be set on it instead
_CONTROLLER_OPTIONS = ("first_step", "min_step", "max_step", "norm", "safety", "ifactor", "dfactor", "step_t",
                       "jump_t")
_GRID_OPTIONS = ("step_size", "interpolation", "perturb", "grid_constructor", "max_iters", "max_order")


@dataclass(frozen=True)
class Parts:
    """The validated typed parts of one solve."""

    method: str | Method
    controller: Controller
    adjoint: Adjoint | None
    max_steps: int | None


def method_name(method: str | Method) -> str:
    return method.name if isinstance(method, Method) else method


def _is_adaptive(method: str | Method, backend: Backend) -> bool:
    return method.adaptive if isinstance(method, Method) else backend.is_adaptive(method)


def _check_method(method: Any, backend: Backend, argument: str) -> None:
    if isinstance(method, Method):
        if backend.name != "torch":
            raise ValueError(f"{argument}: a Method object runs on backend 'torch' only; backend {backend.name!r} "
                             f"takes a name, one of {list(backend.methods())}")
        return
    if not isinstance(method, str) or method not in backend.methods():
        raise ValueError(f"unknown {argument} {method!r} for backend {backend.name!r}; "
                         f"choose one of {list(backend.methods())} or pass a Method")


def _check_controller(controller: Any, method: str | Method, backend: Backend, argument: str) -> None:
    if controller is None:
        return
    if not isinstance(controller, (IController, FixedGrid)):
        raise TypeError(f"{argument} must be IController(...), PIController(...), FixedGrid(...), 'i', 'pi' "
                        f"or None, got {controller!r}")
    adaptive = _is_adaptive(method, backend)
    if adaptive and isinstance(controller, FixedGrid):
        raise ValueError(f"{argument}=FixedGrid(...) needs a fixed-grid method, but {method_name(method)!r} is "
                         "adaptive; pass IController(...)/PIController(...) or a method such as 'rk4'")
    if not adaptive and isinstance(controller, IController):
        raise ValueError(f"{method_name(method)!r} is a fixed-grid method: pass {argument}=FixedGrid(step_size=...) "
                         "instead of a step-size controller, or an adaptive method such as 'dopri5'")


def _check_max_steps(name: str, value: Any) -> None:
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be an int >= 1, or None for no limit; got {value!r}")


def check_parts(method: Any, controller: Any, adjoint: Any, backend: str | Backend, max_steps: Any,
                warn_after_steps: Any) -> Backend:
    """Validate typed parts against each other; returns the backend."""
    be = get_backend(backend)
    _check_method(method, be, "method")
    _check_controller(controller, method, be, "controller")
    _check_max_steps("max_steps", max_steps)
    _check_max_steps("warn_after_steps", warn_after_steps)
    if isinstance(adjoint, Adjoint):
        adjoint_method = method if adjoint.method is None else adjoint.method
        _check_method(adjoint_method, be, "Adjoint.method")
        _check_controller(adjoint.controller, adjoint_method, be, "Adjoint.controller")
    elif not isinstance(adjoint, bool):
        raise TypeError(f"adjoint must be True, False or Adjoint(...), got {adjoint!r}")
    return be


# what solve takes instead of each of torchdiffeq's spellings (odeint's and odeint_adjoint's arguments)
_TYPED_REPLACEMENTS = {
    "rtol": "controller=IController(rtol=..., atol=...) (or PIController(...), FixedGrid(rtol=...) for the Adams "
            "methods)",
    "atol": "controller=IController(rtol=..., atol=...) (or PIController(...), FixedGrid(atol=...) for the Adams "
            "methods)",
    "options": "the options as fields of controller=IController(first_step=..., max_step=..., step_t=...) or "
               "FixedGrid(step_size=..., interpolation=...), and max_steps= for max_num_steps",
    "adjoint_rtol": "adjoint=Adjoint(controller=IController(rtol=..., atol=...))",
    "adjoint_atol": "adjoint=Adjoint(controller=IController(rtol=..., atol=...))",
    "adjoint_method": "adjoint=Adjoint(method=...)",
    "adjoint_options": "adjoint=Adjoint(controller=..., norm='seminorm', max_steps=...)",
    "adjoint_params": "adjoint=Adjoint(params=...)",
}


def refuse_torchdiffeq_spellings(controller: Any, spellings: Mapping[str, Any]) -> None:
    """solve takes the typed parts only: a TypeError naming the part to pass for each torchdiffeq spelling."""
    if isinstance(controller, str):
        typed = {"i": "IController", "pi": "PIController"}.get(controller, "IController")
        raise TypeError(f"solve() takes controller={typed}(rtol=..., atol=...); controller={controller!r} is "
                        "odeint's spelling (or convert with SolverSettings.from_arguments(controller=..., ...))")
    unknown = sorted(set(spellings) - set(_TYPED_REPLACEMENTS))
    if unknown:
        raise TypeError(f"solve() got unexpected keyword argument(s) {unknown}")
    if spellings:
        name = next(iter(spellings))
        owner = "odeint_adjoint's" if name.startswith("adjoint_") else "odeint's"
        raise TypeError(f"solve() takes {_TYPED_REPLACEMENTS[name]}; {name}= is {owner} spelling (or convert "
                        f"with pn.SolverSettings.from_arguments({', '.join(f'{k}=...' for k in spellings)}) and "
                        "pass solve(..., **settings))")


def typed_parts(
    be: Backend, method: Any, controller: Any, adjoint: Any, max_steps: Any, *,
    rtol: Any = None, atol: Any = None, options: Mapping[str, Any] | None = None,
    adjoint_rtol: Any = None, adjoint_atol: Any = None, adjoint_method: Any = None,
    adjoint_options: Mapping[str, Any] | None = None, adjoint_params: Sequence[torch.Tensor] | None = None,
) -> Parts:
    """The one place where sugar becomes typed parts. Mixing a typed part with its sugar is refused."""
    _check_method(method, be, "method")
    kind = "i"
    if isinstance(controller, str):
        if controller not in ("i", "pi"):
            raise ValueError(f"controller must be 'i' (integral, torchdiffeq's), 'pi', or a typed controller "
                             f"(IController(...), PIController(...), FixedGrid(...)); got {controller!r}")
        kind, controller = controller, None
    options = check_options(options, _is_adaptive(method, be), method_name(method))
    if controller is not None:
        _refuse_mixing("controller", controller, rtol=rtol, atol=atol,
                       **{f"options[{k!r}]": options.get(k) for k in (*_CONTROLLER_OPTIONS, *_GRID_OPTIONS)})
    else:
        controller = _controller_from_options(method, be, kind, rtol, atol, options)
    if max_steps is None and options.get("max_num_steps") is not None:
        max_steps = int(options["max_num_steps"])
    sugar = dict(adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
                 adjoint_options=adjoint_options, adjoint_params=adjoint_params)
    if adjoint is True and all(v is None for k, v in sugar.items() if k != "adjoint_params"):
        # nothing said about the backward solve: it reuses the forward parts, typed or sugar alike
        adjoint = Adjoint(params=adjoint_params)
    elif adjoint is True:
        adjoint = _adjoint_from_sugar(be, method, kind, rtol, atol, options, **sugar)
    elif isinstance(adjoint, Adjoint):
        _refuse_mixing("adjoint", adjoint, **sugar)
    elif adjoint is False:
        given = sorted(k for k, v in sugar.items() if v is not None)
        if given:
            raise ValueError(f"{', '.join(given)} only apply with adjoint=True; drop them or set adjoint=True")
    check_parts(method, controller, adjoint, be, max_steps, None)
    return Parts(method, controller, adjoint or None, max_steps)


def _refuse_mixing(part: str, value: Any, **sugar: Any) -> None:
    given = [k for k, v in sugar.items() if v is not None]
    if given:
        raise ValueError(f"{part}={value!r} is given, so {', '.join(given)} cannot also be: set "
                         f"{'it' if len(given) == 1 else 'them'} on the {part} object instead")


def _controller_from_options(method, be: Backend, kind: str, rtol, atol, options: Mapping[str, Any]) -> Controller:
    if not _is_adaptive(method, be):
        if kind != "i":
            raise ValueError(f"controller={kind!r} is for adaptive methods; {method_name(method)!r} is fixed-grid")
        adams = {k: int(options[k]) for k in ("max_iters", "max_order") if options.get(k) is not None}
        if method in ADAMS_METHODS:  # the only fixed-grid methods that read tolerances (their corrector)
            adams.update({k: _tolerance_value(v) for k, v in (("rtol", rtol), ("atol", atol)) if v is not None})
        return FixedGrid(step_size=None if options.get("step_size") is None else float(options["step_size"]),
                         interpolation=options.get("interpolation", "linear"),
                         perturb=bool(options.get("perturb", False)),
                         grid_constructor=options.get("grid_constructor"), **adams)
    fields = {k: options[k] for k in _CONTROLLER_OPTIONS if options.get(k) is not None}
    for key in ("first_step", "min_step", "max_step", "safety", "ifactor", "dfactor"):
        if key in fields:
            fields[key] = float(fields[key])
    if rtol is not None:
        fields["rtol"] = _tolerance_value(rtol)
    if atol is not None:
        fields["atol"] = _tolerance_value(atol)
    return (PIController if kind == "pi" else IController)(**fields)


def _tolerance_value(tol: Any) -> Any:
    """Sequences become tuples (hashable, typed); tensors and numbers pass through to be checked, other
    number types (numpy scalars, 0-d arrays) become floats; text is refused, as torchdiffeq refuses it."""
    if isinstance(tol, list):
        return tuple(tol)
    if isinstance(tol, (str, bytes)):
        raise TypeError(f"rtol/atol must be numbers, got the text {tol!r}; pass a number, e.g. float({tol!r})")
    if not isinstance(tol, (torch.Tensor, tuple, int, float)):
        try:
            return float(tol)
        except (TypeError, ValueError):
            raise TypeError(f"rtol/atol must be numbers >= 0, got {tol!r}") from None
    return tol


def _adjoint_from_sugar(be: Backend, method, kind, rtol, atol, options, *, adjoint_rtol, adjoint_atol,
                        adjoint_method, adjoint_options, adjoint_params) -> Adjoint:
    """torchdiffeq's adjoint_* arguments as an Adjoint; unset ones default to the forward settings."""
    adjoint_method = method if adjoint_method is None else adjoint_method
    _check_method(adjoint_method, be, "adjoint_method")
    if adjoint_method != method and options and adjoint_options is None:
        raise ValueError("adjoint_method differs from method, so adjoint_options cannot be inferred from "
                         "options: pass adjoint_options too")
    if adjoint_options is None:
        adjoint_options = {k: v for k, v in options.items() if k != "norm"}
    adjoint_options = dict(adjoint_options)
    norm = adjoint_options.pop("norm", None)
    if not (norm is None or norm == "seminorm" or callable(norm)):
        raise ValueError(f"adjoint_options['norm'] must be 'seminorm' or a callable, got {norm!r}")
    adjoint_options = check_options(adjoint_options, _is_adaptive(adjoint_method, be), method_name(adjoint_method))
    controller = _controller_from_options(
        adjoint_method, be, kind,
        _scalar_tol("adjoint_rtol" + (" (by default the forward rtol)" if adjoint_rtol is None else ""),
                    rtol if adjoint_rtol is None else adjoint_rtol, "pass adjoint_rtol=<a number>"),
        _scalar_tol("adjoint_atol" + (" (by default the forward atol)" if adjoint_atol is None else ""),
                    atol if adjoint_atol is None else adjoint_atol, "pass adjoint_atol=<a number>"), adjoint_options)
    max_steps = adjoint_options.get("max_num_steps")
    return Adjoint(method=adjoint_method, controller=controller, norm="mixed" if norm is None else norm,
                   params=adjoint_params, max_steps=None if max_steps is None else int(max_steps))


def _scalar_tol(name: str, tol: Any, fix: str) -> Any:
    """The adjoint's state is one flat vector, so its tolerance is one number."""
    if isinstance(tol, torch.Tensor) and tol.numel() > 1 or isinstance(tol, (tuple, list)):
        raise ValueError(f"{name} must be a single number for the adjoint solve, whose state is one flat vector; "
                         f"{fix}")
    return tol


def solver_config(method: str | Method, controller: Controller, max_steps: int | None,
                  warn_after_steps: int | None, extra: Mapping[str, Any] | None, state: StateStructure,
                  like: torch.Tensor) -> SolverConfig:
    """Lower one method + controller to what a backend reads (tolerances checked against the state)."""
    common = dict(method=method, max_num_steps=_UNLIMITED_STEPS if max_steps is None else max_steps,
                  warn_after_steps=warn_after_steps, extra=dict(extra or {}))
    if isinstance(controller, FixedGrid):
        if method in ADAMS_METHODS:  # only their corrector reads tolerances on a fixed grid
            common.update(rtol=check_tolerance("rtol", controller.rtol, state, like),
                          atol=check_tolerance("atol", controller.atol, state, like),
                          max_iters=controller.max_iters, max_order=controller.max_order)
            check_tolerance_pair(common["rtol"], common["atol"])
        return SolverConfig(step_size=controller.step_size, interpolation=controller.interpolation,
                            perturb=controller.perturb, grid_constructor=controller.grid_constructor, **common)
    rtol = check_tolerance("rtol", controller.rtol, state, like)
    atol = check_tolerance("atol", controller.atol, state, like)
    check_tolerance_pair(rtol, atol)
    return SolverConfig(
        rtol=rtol, atol=atol, controller=controller.kind, gains=controller.gains,
        norm=_state_norm(controller.norm, state),
        first_step=controller.first_step, min_step=controller.min_step, max_step=controller.max_step,
        safety=controller.safety, ifactor=controller.ifactor, dfactor=controller.dfactor,
        step_t=controller.step_t, jump_t=controller.jump_t, **common,
    )


def _state_norm(norm, state: StateStructure):
    """A user norm sees the state as the caller shaped it; tuple states default to the mixed RMS."""
    if norm is not None and state.is_tuple:
        user_norm = norm

        def tuple_norm(flat: torch.Tensor, _split=state.split) -> torch.Tensor:
            return user_norm(_split(flat))

        return tuple_norm
    if norm is None and state.is_tuple:
        return StateNorm(state.sizes)  # mixed RMS: the largest per-tensor RMS, as torchdiffeq
    return norm


def adjoint_config(parts: Parts, forward: SolverConfig, be: Backend, like: torch.Tensor) -> SolverConfig:
    """The backward solve's config; unset Adjoint fields default to the forward parts."""
    adjoint = parts.adjoint
    method = parts.method if adjoint.method is None else adjoint.method
    controller = adjoint.controller
    if controller is None:
        controller = _forward_controller_for_adjoint(parts, method, be)
    max_steps = parts.max_steps if adjoint.max_steps is None else adjoint.max_steps
    # the backward solve's state is the augmented vector, not tuple-shaped. Its func is the adjoint's own
    # vector-Jacobian product, which calls autograd inside func: the torch backend's compiled and graphed
    # steps are for the forward solve only, so the backward one runs eagerly
    extra = {key: value for key, value in forward.extra.items()
             if not (be.name == "torch" and key in ("compile", "cuda_graph"))}
    return solver_config(method, controller, max_steps, forward.warn_after_steps, extra, StateStructure(None), like)


def _forward_controller_for_adjoint(parts: Parts, method, be: Backend) -> Controller:
    forward = parts.controller
    if isinstance(forward, FixedGrid) != (not _is_adaptive(method, be)):
        return FixedGrid() if not _is_adaptive(method, be) else IController()
    if isinstance(forward, FixedGrid):
        return forward
    fix = ("pass the adjoint's own: adjoint_rtol=..., adjoint_atol=... to odeint_adjoint, "
           "adjoint=Adjoint(controller=IController(rtol=..., atol=...)) to solve")
    _scalar_tol("the forward rtol, which the adjoint solve reuses,", forward.rtol, fix)
    _scalar_tol("the forward atol, which the adjoint solve reuses,", forward.atol, fix)
    return replace(forward, norm=None)
