"""Audit the ODE blocks of a whole network, each right-hand side at the state it really receives.

An ODE block is a ``pynodeta.ode.SolvesODE`` (``.func`` and ``.last_stats``, such as
``pynodeta.models.ODEBlock``) whose ``.func`` is time-aware (``forward(t, y)``). Its right-hand side is audited at the
block's input state, captured with a hook while the network runs on a real batch; the forward pass
is stopped there, so the solve itself never runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from pynodeta.nn import is_time_aware
from pynodeta.ode.stats import SolvesODE

from .audit import DEFAULT_TIMES, time_awareness
from .recording import clone_structure, preserved_state
from .report import TimeAwarenessReport

__all__ = ["find_ode_functions", "capture_state", "audit_ode_blocks"]

State = torch.Tensor | tuple[torch.Tensor, ...]


def find_ode_functions(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """``(name, block, func)`` for every ODE block (``SolvesODE``) whose ``.func`` is a time-aware nn.Module."""
    return [(name, module, module.func) for name, module in model.named_modules()
            if isinstance(module, SolvesODE) and isinstance(module.func, nn.Module) and is_time_aware(module.func)]


class _Captured(Exception):
    """Raised by the capturing hook to stop the forward pass once the state is known."""


def capture_state(
    model: nn.Module,
    target: nn.Module,
    run: Callable[[], Any],
    mode: Literal["eval", "train"] = "eval",
) -> State:
    """The state ``target`` receives the first time ``run()`` calls it.

    target: an ODE block (its first argument is the initial state) or a time-aware right-hand
    side (``forward(t, y)``: its y). ``run`` runs ``model`` forward, e.g. ``lambda: model(batch)``;
    it is stopped as soon as the state is captured, and the model's state is restored afterwards.
    """
    return _capture_call(model, target, run, mode)[0]


def _capture_call(
    model: nn.Module, target: nn.Module, run: Callable[[], Any], mode: Literal["eval", "train"],
    block: nn.Module | None = None,
) -> tuple[State, tuple[float, float] | None]:
    """``(state, span)``: the state ``target`` receives the first time ``run()`` calls it (see
    :func:`capture_state`), and the span of the times ``block`` (target itself, or the ODE block whose
    right-hand side it is) was called with in that forward pass (:func:`_called_span`; None without a block)."""
    captured: dict[str, Any] = {"span": None}

    def record_span(module, args, kwargs):
        captured["span"] = _called_span(args, kwargs)

    def capture(module, args, kwargs):
        values = [*args, *kwargs.values()]
        state = values[1] if is_time_aware(module) else values[0]
        captured["state"] = clone_structure(state)
        raise _Captured

    # registered first, so that on a block that is the target too its call's span is recorded before capture stops it
    handles = [] if block is None else [block.register_forward_pre_hook(record_span, with_kwargs=True)]
    handles.append(target.register_forward_pre_hook(capture, with_kwargs=True))
    try:
        with preserved_state(model), torch.no_grad():
            model.train(mode == "train")
            run()
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if "state" not in captured:
        raise ValueError(f"{type(target).__name__} was never called while the model ran on the batch; "
                         f"check that it belongs to this model")
    return captured["state"], captured["span"]


def _called_span(args: tuple, kwargs: dict) -> tuple[float, float] | None:
    """``(t[0], t[-1])`` of an ODE block called with its times, ``block(x, t)`` with t a 1-D tensor (as
    ``ODEBlock`` takes them: a trajectory model passes its time grid per call), else None."""
    t = kwargs["t"] if "t" in kwargs else args[1] if len(args) > 1 else None
    if not (isinstance(t, torch.Tensor) and t.dim() == 1 and len(t) >= 2 and t.is_floating_point()):
        return None
    return float(t[0]), float(t[-1])


def _resolve(model: nn.Module, path: str) -> tuple[str, nn.Module, nn.Module]:
    try:
        target = model.get_submodule(path)
    except AttributeError:
        names = [name for name, _, _ in find_ode_functions(model)]
        raise ValueError(f"module {path!r} not found in the model; ODE blocks found: {names or 'none'}") from None
    func = getattr(target, "func", None)
    if isinstance(func, nn.Module) and is_time_aware(func):
        return path, target, func
    if is_time_aware(target):
        return path, target, target
    raise ValueError(f"module {path!r} ({type(target).__name__}) is neither an ODE block with a time-aware "
                     f".func nor a module with forward(t, x)")


def _block_of(model: nn.Module, name: str, target: nn.Module, func: nn.Module) -> tuple[str, nn.Module | None]:
    """``(name, block)`` of the ODE block that integrates ``func``: ``target`` itself, else the block whose
    ``.func`` is the target (``module="model.ode.func"``), else ``(name, None)`` (e.g. a diffusion network)."""
    if func is not target:
        return name, target
    return next(((block_name, block) for block_name, block, block_func in find_ode_functions(model)
                 if block_func is target), (name, None))


def _pair(span) -> tuple[float, float] | None:
    return None if span is None or len(span) != 2 else (float(span[0]), float(span[1]))


def _integration_span(block: nn.Module, called_span: tuple[float, float] | None) -> tuple[float, float] | None:
    """The times an ODE block integrates over: those it was called with, else its ``t_span``, else None."""
    return called_span if called_span is not None else _pair(getattr(block, "t_span", None))


def _span_times(span: tuple[float, float] | None, points: int = 5) -> list[float]:
    """5 points over ``span``, else the default times [0, 1]."""
    if span is None:
        return list(DEFAULT_TIMES)
    return torch.linspace(span[0], span[1], points, dtype=torch.float64).tolist()


def _check_times_in_span(times: Sequence[float], span: tuple[float, float], name: str) -> None:
    """Times an ODE block never integrates over are refused: its TA-BN layers clamp them to their grid's ends,
    and the audit would report those layers as constant in t, blaming them for the times asked. (A diffusion
    network's ``time_range`` is not checked: its times come in the units of its conditioning, which
    :func:`~pynodeta.diagnose.time_ranges.diffusion_times` converts to.)"""
    low, high = min(span), max(span)
    # a float32 time grid rounds its ends by up to ~6e-8 relative: --times 0.7 lies within a grid ending at 0.7
    slack = 1e-6 * max(1.0, abs(low), abs(high))
    outside = [t for t in times if not low - slack <= t <= high + slack]
    if outside:
        raise ValueError(f"times {outside} lie outside {name}'s span [{low:g}, {high:g}], the times it is run at "
                         f"(TA-BN layers clamp other times to their grid's ends and would look constant in t); pass "
                         f"times within [{low:g}, {high:g}], or leave them out for 5 points over the span")


def audit_ode_blocks(
    model: nn.Module,
    batch: Any,
    times: Sequence[float] | None = None,   # default: 5 points over each block's span (or time_range), else [0, 1]
    *,
    module: str | None = None,               # audit this submodule (an ODE block or a forward(t, x))
    run: Callable[[], Any] | None = None,    # how to run the model forward (default: model(batch) / model(*batch))
    mode: Literal["eval", "train"] = "eval",
    threshold: float = 0.05,
    seed: int = 0,
) -> list[TimeAwarenessReport]:
    """One ``time_awareness`` report per ODE block of ``model`` (or for ``module``).

    ``batch`` is the model's input, or a tuple of its positional inputs (``model(*batch)``: a model taking
    one tuple gets ``(state,)``). Each block's right-hand side is audited at the input state the block
    receives on it, by default at 5 points over the times the block integrates over on it: those it is
    called with (``block(x, t)``, a trajectory model's time grid), else its ``t_span``. ``times`` outside them
    are refused. Raises ValueError when the model holds no ODE block and no ``module`` is given.
    """
    if module is not None:
        targets = [_resolve(model, module)]
    else:
        targets = find_ode_functions(model)
        if not targets:
            raise ValueError("no ODE block found (a submodule with .last_stats and a time-aware .func); "
                             "name the right-hand side to audit with module='path.to.func'")
    run = run or (lambda: model(*batch) if isinstance(batch, tuple) else model(batch))
    reports = []
    for name, target, func in targets:
        block_name, block = _block_of(model, name, target, func)
        state, called_span = _capture_call(model, target, run, mode, block)
        span = _integration_span(target if block is None else block, called_span)
        if times is not None and span is not None:
            _check_times_in_span(times, span, block_name)
        declared = span if span is not None else _pair(getattr(target, "time_range", None))
        block_times = list(times) if times is not None else _span_times(declared)
        subject = f"{name}.func" if func is not target else name
        reports.append(time_awareness(func, state, block_times, mode=mode, threshold=threshold,
                                      seed=seed, subject=subject))
    return reports
