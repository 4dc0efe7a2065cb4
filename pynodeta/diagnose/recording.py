"""Run a model at one fixed input for several times, recording every module call through hooks.

Nothing the audit does may outlive it: ``preserved_state`` puts back parameters, buffers (running
statistics, ``num_batches_tracked``), training flags and plain public attributes (an NFE counter,
an ODE block's ``last_stats``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pynodeta.nn import is_time_aware

from .estimators import time_share

__all__ = [
    "Site",
    "preserved_state",
    "seeded",
    "record_over_times",
    "state_tensor",
    "clone_structure",
    "flat_floating",
    "stacked",
    "share",
]


@dataclass
class Site:
    """One call of one module in a forward pass, recorded at every audited time.

    inputs/outputs[k]: the module's state input and output at times[k] (detached copies; the input
    is the largest floating tensor argument, t excluded). calls[0]: (args, kwargs) at times[0],
    kept only for modules the audit may call again.
    """

    name: str
    module: nn.Module
    call: int                   # 0 for the first call of this module within one forward pass
    order: int                  # position in the order in which calls finished (first pass)
    inputs: list[torch.Tensor | None] = field(default_factory=list)
    outputs: list[torch.Tensor | None] = field(default_factory=list)
    calls: list[tuple[tuple, dict]] = field(default_factory=list)

    @property
    def label(self) -> str:
        name = self.name or "<model>"
        return name if self.call == 0 else f"{name} (call {self.call + 1})"


def clone_structure(obj: Any) -> Any:
    """Detached copies of the tensors in ``obj`` (tensors, tuples, lists, dicts); the rest as is."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(clone_structure(o) for o in obj)
    if isinstance(obj, dict):
        return {k: clone_structure(v) for k, v in obj.items()}
    return obj


def _floating_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _floating_tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _floating_tensors(o)]
    return []


def state_tensor(obj: Any) -> torch.Tensor | None:
    """The largest floating tensor in ``obj`` (the state, not a (batch,) or 0-d time), or None."""
    tensors = _floating_tensors(obj)
    return max(tensors, key=lambda t: t.numel()) if tensors else None


def flat_floating(obj: Any) -> torch.Tensor:
    """All floating tensors in ``obj`` (a model output: tensor, tuple, dict), flattened and joined."""
    return torch.cat([t.reshape(-1) for t in _floating_tensors(obj)])


def stacked(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    """One recorded tensor per time, stacked to (times, *shape); None if a call had no tensor."""
    return None if any(t is None for t in tensors) else torch.stack(tensors)


def share(tensors: list[torch.Tensor | None]) -> float:
    """``estimators.time_share`` of one tensor per time (0 without tensors)."""
    stack = stacked(tensors)
    return 0.0 if stack is None else time_share(stack)


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore parameters, buffers, training flags and public plain attributes of every submodule."""
    saved = []
    for module in model.modules():
        tensors = {(store, name): (obj, obj.detach().clone())
                   for store in ("_parameters", "_buffers")
                   for name, obj in getattr(module, store).items() if obj is not None}
        attributes = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}
        saved.append((module, module.training, tensors, attributes))
    try:
        yield
    finally:
        with torch.no_grad():
            for module, training, tensors, attributes in saved:
                for (store, name), (obj, value) in tensors.items():
                    getattr(module, store)[name] = obj      # the original object, in case it was replaced
                    obj.copy_(value)
                module.training = training
                added = [k for k in vars(module) if not k.startswith("_") and k != "training"
                         and k not in attributes]
                for k in added:
                    del module.__dict__[k]
                module.__dict__.update(attributes)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The same random numbers for every audited time (dropout masks, noise), global RNG untouched."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _Recorder:
    """Forward pre-hooks copy each call's input, forward hooks its output."""

    def __init__(self, model: nn.Module, keep_calls: Callable[[nn.Module], bool]):
        self.model = model
        self.names = {id(m): n for n, m in model.named_modules()}
        self.keep_calls = keep_calls
        self.sites: dict[tuple[str, int], Site] = {}
        self.first_pass = True
        self._calls: dict[str, int] = {}
        self._open: dict[str, list[tuple[str, int]]] = {}

    def new_pass(self) -> None:
        self._calls, self._open = {}, {}

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        name = self.names[id(module)]
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        key = (name, call)
        self._open.setdefault(name, []).append(key)
        site = self.sites.get(key)
        if site is None:
            if not self.first_pass:
                raise _CallMismatch(name)
            site = self.sites[key] = Site(name, module, call, order=-1)
        state = args[1:] if is_time_aware(module) and args else args
        site.inputs.append(clone_structure(state_tensor((state, kwargs))))
        if self.first_pass and self.keep_calls(module):
            site.calls.append((clone_structure(args), clone_structure(kwargs)))

    def post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        key = self._open[self.names[id(module)]].pop()
        site = self.sites[key]
        if site.order < 0:
            site.order = sum(s.order >= 0 for s in self.sites.values())
        site.outputs.append(clone_structure(state_tensor(output)))


class _CallMismatch(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _time_tensor(t: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(t, dtype=like.dtype, device=like.device)


def record_over_times(
    model: nn.Module,
    x: torch.Tensor | tuple[torch.Tensor, ...],
    times: Sequence[float],
    seed: int,
    keep_calls: Callable[[nn.Module], bool],
) -> tuple[dict[tuple[str, int], Site], list[Any]]:
    """Call ``model(t, x)`` for each t (a 0-d tensor like x) and record every module call.

    Returns the sites, keyed by (module name, call index), and the model's output at each time.
    Raises ValueError when a module is called a different number of times at different t (an
    adaptive solver inside the model): audit the right-hand side itself instead.
    """
    like = state_tensor(x)
    recorder = _Recorder(model, keep_calls)
    handles = []
    for module in {id(m): m for m in model.modules()}.values():
        handles.append(module.register_forward_pre_hook(recorder.pre_hook, with_kwargs=True))
        handles.append(module.register_forward_hook(recorder.post_hook))
    outputs = []
    try:
        for t in times:
            recorder.new_pass()
            with seeded(seed, like.device):
                outputs.append(clone_structure(model(_time_tensor(t, like), x)))
            recorder.first_pass = False
    except _CallMismatch as error:
        raise _mismatch_error(error.name) from None
    finally:
        for handle in handles:
            handle.remove()
    counts = {len(site.outputs) for site in recorder.sites.values()}
    if counts - {len(times)}:
        short = next(s.label for s in recorder.sites.values() if len(s.outputs) != len(times))
        raise _mismatch_error(short)
    return recorder.sites, outputs


def _mismatch_error(name: str) -> ValueError:
    return ValueError(
        f"module {name or '<model>'!r} was called a different number of times at different t, so its "
        f"calls cannot be compared across times (an adaptive ODE solve inside the model?); audit the "
        f"time-aware right-hand side itself, e.g. time_awareness(block.func, state, times)"
    )
