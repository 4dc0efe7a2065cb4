"""Input checks for the front doors. Every message names the argument and says how to fix it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import warn_unresolvable_tolerance

__all__ = ["StateStructure", "check_times", "flatten_state", "check_tolerance", "check_tolerance_pair",
           "check_options", "OPTION_KEYS", "all_finite"]

# options accepted by solve/odeint (torchdiffeq's names plus the controller constants)
OPTION_KEYS = frozenset(
    {"step_size", "first_step", "max_num_steps", "min_step", "max_step", "dtype", "norm",
     "safety", "ifactor", "dfactor", "interpolation", "perturb", "grid_constructor", "step_t", "jump_t",
     "max_iters", "max_order"}
)


def all_finite(x: torch.Tensor) -> bool:
    """Whether every element is finite. A sum is non-finite when any element is (inf - inf is nan), so one
    cheap reduction decides the common case (``isfinite(x).all()`` costs several ops); only a sum of finite
    values that overflows needs the full test."""
    if math.isfinite(float(x.detach().sum())):
        return True
    return bool(torch.isfinite(x).all())


def check_times(t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a 1-D floating-point torch.Tensor of output times, got {type(t).__name__}")
    if not torch.is_floating_point(t):
        raise TypeError(f"t must be floating point, got dtype {t.dtype}; pass e.g. torch.tensor([0.0, 1.0])")
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"t must be 1-D and non-empty, got shape {tuple(t.shape)}")
    times = t.detach().tolist()  # one transfer; the checks run on host floats (cheaper than tensor ops)
    if not all(math.isfinite(v) for v in times):
        raise ValueError(f"t must be finite, got {times}")
    pairs = list(zip(times, times[1:]))
    if not (all(b > a for a, b in pairs) or all(b < a for a, b in pairs)):
        raise ValueError(
            "t must be strictly increasing or strictly decreasing (no repeats); sort it, e.g. "
            f"torch.sort(t).values, or drop duplicates; got {times[:8]}{'...' if len(times) > 8 else ''}"
        )
    return t


@dataclass(frozen=True)
class StateStructure:
    """The structure of the caller's state: one tensor, or a tuple of tensors that the solver sees as one
    flat vector (the backends only ever see a single tensor; ``backends.external.FlatState`` is the next
    step down, that tensor as a host numpy vector)."""

    shapes: tuple[torch.Size, ...] | None  # None: a single tensor

    @property
    def is_tuple(self) -> bool:
        return self.shapes is not None

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(s.numel() for s in self.shapes) if self.shapes is not None else ()

    def split(self, flat: torch.Tensor, lead: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
        """Inverse of flattening; ``lead`` are leading dimensions (e.g. the time axis of a solution)."""
        parts, start = [], 0
        for shape in self.shapes:
            end = start + shape.numel()
            parts.append(flat[..., start:end].view((*lead, *shape)))  # a tuple: 0-d parts too
            start = end
        return tuple(parts)

    def wrap(self, func: Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        if self.shapes is None:
            return func

        def flat_func(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = func(t, self.split(y))
            if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
                raise ValueError(f"func must return a tuple of {len(self.shapes)} tensors for a tuple state")
            for i, (part, shape) in enumerate(zip(out, self.shapes)):
                if not isinstance(part, torch.Tensor) or part.shape != shape:
                    got = tuple(part.shape) if isinstance(part, torch.Tensor) else type(part).__name__
                    raise ValueError(f"func's output [{i}] must be shaped like y0[{i}] {tuple(shape)}, got {got}")
            return torch.cat([o.reshape(-1) for o in out])

        return flat_func


def flatten_state(y0: Any) -> tuple[torch.Tensor, StateStructure]:
    if isinstance(y0, torch.Tensor):
        _check_state_tensor("y0", y0)
        return y0, StateStructure(None)
    if isinstance(y0, (tuple, list)) and y0 and all(isinstance(p, torch.Tensor) for p in y0):
        for i, part in enumerate(y0):
            _check_state_tensor(f"y0[{i}]", part)
        dtypes = {p.dtype for p in y0}
        devices = {p.device for p in y0}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(f"the tensors of a tuple y0 must share dtype and device, got {dtypes} on {devices}")
        return torch.cat([p.reshape(-1) for p in y0]), StateStructure(tuple(p.shape for p in y0))
    raise TypeError(f"y0 must be a floating-point tensor or a non-empty tuple of them, got {type(y0).__name__}")


def _check_state_tensor(name: str, y: torch.Tensor) -> None:
    if torch.is_complex(y):
        raise TypeError(f"{name} is complex ({y.dtype}); complex states are not supported yet: integrate the "
                        f"real and imaginary parts as a real state, e.g. torch.view_as_real({name})")
    if not torch.is_floating_point(y):
        raise TypeError(f"{name} must be floating point, got {y.dtype}; convert with {name}.float()")
    if not all_finite(y):
        raise ValueError(f"{name} contains NaN or Inf; the initial state must be finite")


def check_tolerance(name: str, tol: Any, state: StateStructure, like: torch.Tensor) -> float | torch.Tensor:
    """A float >= 0, a tensor broadcastable to the state, or (tuple states) one value per part (0 is allowed,
    as in torchdiffeq: a purely relative or purely absolute tolerance; :func:`check_tolerance_pair` refuses
    both 0 at once)."""
    if isinstance(tol, torch.Tensor):
        if tol.requires_grad:
            raise ValueError(f"{name} cannot require gradient; pass {name}.detach()")
        if not (tol >= 0).all() or not torch.isfinite(tol).all():
            raise ValueError(f"{name} must be >= 0 and finite everywhere, got min {tol.min().item():.3g}, "
                             f"max {tol.max().item():.3g}")
        if tol.numel() == 1:
            return float(tol)
        if not _broadcasts(tol.shape, like.shape):
            raise ValueError(f"{name} has shape {tuple(tol.shape)}, which does not broadcast to the state's "
                             f"{tuple(like.shape)}; pass one value, or a tensor shaped like (or broadcastable to) y0")
        return tol.to(like).expand(like.shape)
    if isinstance(tol, Sequence) and not isinstance(tol, str):
        if not state.is_tuple or len(tol) != len(state.shapes):
            raise ValueError(f"a sequence {name} needs a tuple y0 with one entry per tensor ({len(tol)} given)")
        parts = [torch.as_tensor(check_tolerance(name, v, StateStructure(None), like), dtype=like.dtype).expand(n)
                 for v, n in zip(tol, state.sizes)]
        return torch.cat(parts).to(like.device)
    try:
        value = float(tol)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number >= 0, got {tol!r}") from None
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be >= 0 and finite, got {value}")
    return value


def check_tolerance_pair(rtol: float | torch.Tensor, atol: float | torch.Tensor) -> None:
    """The error is scaled by ``atol + rtol * max(|y0|, |y1|)``: with both 0 (anywhere) that is 0 wherever
    the state is, and no step can be accepted."""
    per_element = isinstance(rtol, torch.Tensor) or isinstance(atol, torch.Tensor)
    if per_element:  # no tensor is made for two numbers: this runs on every solve
        both_zero = bool(((torch.as_tensor(rtol) == 0) & (torch.as_tensor(atol) == 0)).any())
    else:
        both_zero = rtol == 0 and atol == 0
    if both_zero:
        raise ValueError("rtol and atol are both 0" + (" for some elements" if per_element else "") +
                         ": the error is measured against atol + rtol * |y|, which is then 0; set one of them > 0")


def _broadcasts(shape: torch.Size, target: torch.Size) -> bool:
    if len(shape) > len(target):
        return False
    return all(a in (1, b) for a, b in zip(reversed(shape), reversed(target)))


_warned_tolerances: set[tuple[torch.dtype, float, float]] = set()


def warn_if_unresolvable(config: Any, y0: torch.Tensor) -> None:
    """Warn when atol + rtol |y| is below ~10 ulps of the state: rounding noise then looks like error."""
    if y0.numel() == 0:
        return
    rtol = float(config.rtol.min()) if isinstance(config.rtol, torch.Tensor) else config.rtol
    eps = torch.finfo(y0.dtype).eps
    if rtol >= 10 * eps:  # atol + rtol |y| >= 10 eps |y| for every y: no need to look at the state
        return
    atol = float(config.atol.min()) if isinstance(config.atol, torch.Tensor) else config.atol
    scale = max(float(y0.detach().abs().max()), 1.0)  # the state's size, at least the O(1) it usually grows to
    key = (y0.dtype, rtol, atol)
    if atol + rtol * scale < 10 * eps * scale and key not in _warned_tolerances:
        _warned_tolerances.add(key)  # once per process for each dtype and tolerance pair
        warn_unresolvable_tolerance(y0.dtype, rtol, atol, eps)


_ADAMS = ("explicit_adams", "implicit_adams", "fixed_adams")  # the methods that read max_iters / max_order

# torchdiffeq options pynodeta does not implement yet, and why a silent drop would be wrong
_NOT_YET: dict[str, str] = {}


# options read as numbers; each is converted to float (or int) once its type is checked, so the later
# float()/int() calls never fail with a message that names neither the option nor the type
_NUMBER_OPTIONS = ("step_size", "first_step", "min_step", "max_step", "safety", "ifactor", "dfactor")
_INTEGER_OPTIONS = ("max_num_steps", "max_iters", "max_order")
_TIME_OPTIONS = ("step_t", "jump_t")


def _scalar(value: Any) -> Any:
    """A one-element real tensor as its Python number; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool and not value.is_complex():
        return value.item()
    return value


def _number_option(key: str, value: Any) -> float:
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"options[{key!r}] must be a number (int or float), got {value!r} of type "
                        f"{type(value).__name__}")
    return float(value)


def _integer_option(key: str, value: Any) -> int:
    value = _scalar(value)
    integral = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not integral:  # 1e6 is accepted; 2.5 or 'abc' is not
        raise TypeError(f"options[{key!r}] must be an int, got {value!r} of type {type(value).__name__}")
    return int(value)


def _time_option(key: str, value: Any) -> tuple[float, ...]:
    try:
        times = value.detach().reshape(-1).tolist() if isinstance(value, torch.Tensor) else list(value)
        if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in times):
            raise TypeError
    except TypeError:
        raise TypeError(f"options[{key!r}] must be a 1-D tensor or a sequence of times (numbers), got "
                        f"{value!r} of type {type(value).__name__}") from None
    return tuple(float(v) for v in times)  # a list stays float64 (no float32 tensor on the way)


def _check_option_types(options: dict[str, Any]) -> None:
    """Replace the numeric options by checked floats/ints; a wrong type is a TypeError naming the key."""
    for key in _NUMBER_OPTIONS:
        if options.get(key) is not None:
            options[key] = _number_option(key, options[key])
    for key in _INTEGER_OPTIONS:
        if options.get(key) is not None:
            options[key] = _integer_option(key, options[key])
    for key in _TIME_OPTIONS:
        if options.get(key) is not None:
            options[key] = _time_option(key, options[key])
    if options.get("perturb") is not None and not isinstance(options["perturb"], bool):
        raise TypeError(f"options['perturb'] must be True or False, got {options['perturb']!r} of type "
                        f"{type(options['perturb']).__name__}")
    if not isinstance(options.get("interpolation", "linear"), str):
        raise TypeError(f"options['interpolation'] must be the string 'linear' or 'cubic', got "
                        f"{options['interpolation']!r}")


def check_options(options: Mapping[str, Any] | None, adaptive: bool, method: str) -> dict[str, Any]:
    options = dict(options or {})
    if "interp" in options:  # torchdiffeq's name for the fixed-grid interpolation
        if "interpolation" in options:
            raise ValueError("options 'interp' and 'interpolation' are the same setting; pass one of them")
        options["interpolation"] = options.pop("interp")
    missing = sorted(set(options) & set(_NOT_YET))
    if missing:
        raise ValueError(f"unknown option(s) {missing}: torchdiffeq's, not supported by pynodeta yet (ignoring "
                         "them would be wrong: " + "; ".join(f"{k}: {_NOT_YET[k]}" for k in missing) + ")")
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; valid options are {sorted(OPTION_KEYS)}")
    _check_option_types(options)
    if "step_size" in options and options["step_size"] is not None:
        if adaptive:
            raise ValueError(f"options['step_size'] is for fixed-grid methods; {method!r} is adaptive "
                             "(use first_step/max_step, or a fixed-grid method such as 'rk4')")
        _positive(options, "step_size")
    for key in ("first_step", "max_step"):
        if options.get(key) is not None:
            _positive(options, key)
    if options.get("min_step") is not None and not 0 <= options["min_step"] < math.inf:
        raise ValueError(f"options['min_step'] must be >= 0 and finite, got {options['min_step']}")
    if options.get("max_num_steps") is not None and options["max_num_steps"] < 1:
        raise ValueError(f"options['max_num_steps'] must be >= 1, got {options['max_num_steps']}")
    if options.get("dtype") not in (None, torch.float64, torch.float32):
        raise ValueError(f"options['dtype'] (the time dtype) must be torch.float64 or torch.float32, "
                         f"got {options['dtype']}")
    if options.get("interpolation", "linear") not in ("linear", "cubic"):
        raise ValueError(f"options['interpolation'] must be 'linear' or 'cubic', got {options['interpolation']!r}")
    for key in ("perturb", "grid_constructor"):
        if options.get(key) is not None and adaptive:
            raise ValueError(f"options[{key!r}] is for fixed-grid methods; {method!r} is adaptive")
    for key in _TIME_OPTIONS:
        if options.get(key) is not None and not adaptive:
            raise ValueError(f"options[{key!r}] is for adaptive methods; {method!r} steps on a fixed grid "
                             "(put the times into its grid with grid_constructor)")
    for key in ("max_iters", "max_order"):
        if options.get(key) is not None and method not in _ADAMS:
            raise ValueError(f"options[{key!r}] is for the Adams methods {sorted(_ADAMS)}; {method!r} has no corrector")
    if options.get("grid_constructor") is not None and not callable(options["grid_constructor"]):
        raise ValueError("options['grid_constructor'] must be callable as (func, y0, t) -> grid")
    norm = options.get("norm")
    if norm is not None and not callable(norm):
        raise ValueError(f"options['norm'] must be callable (tensor -> scalar tensor), got {norm!r}; "
                         "'seminorm' is an adjoint option: adjoint_options={'norm': 'seminorm'}")
    return options


def _positive(options: Mapping[str, Any], key: str) -> None:
    value = options[key]  # already a float: _check_option_types
    finite_needed = key != "max_step"  # max_step = inf means "no bound"
    if not value > 0 or (finite_needed and not math.isfinite(value)):
        raise ValueError(f"options[{key!r}] must be > 0{' and finite' if finite_needed else ''}, got {value}")
