"""Classic exponential moving average of a module's weights, with diffusers' ``EMAModel`` habits.

``ema.step(model)`` after each optimiser step; ``ema.store(model.parameters())``,
``ema.copy_to(model)`` to evaluate with the averaged weights, ``ema.restore(model.parameters())``
to go back to the raw ones. It also speaks the protocol every weight average of pynodeta shares
(:class:`pynodeta.ema.WeightAverage`): ``update(step)``, ``averaged("ema")``, ``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pynodeta.nn.precision import at_least_float32

from .average import float32_copy

__all__ = ["EMA"]

EMA_KEY = "ema"  # the one average a classic EMA holds, as WeightAverage.averaged() names it


def _float_parameters(source: nn.Module | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    params = source.parameters() if isinstance(source, nn.Module) else source
    return [p for p in params if p.is_floating_point()]


class EMA:
    """θ_ema ← d θ_ema + (1 − d) θ after each step (floating-point parameters only; buffers are not averaged).

    With ``warmup=True`` the decay of update n (n = 1, 2, ...) is that of diffusers' ``EMAModel`` with
    its defaults (``use_ema_warmup=False``, ``update_after_step=0``): with s = n − 1, 0 for s = 0 (the
    first update copies the weights) and min(decay, (1 + s)/(10 + s)) after, so the early average is
    not dominated by the random initialisation. ``warmup=False``: ``decay`` from the first update on.
    """

    def __init__(
        self,
        module: nn.Module,      # the network whose parameters are averaged (copied now)
        decay: float = 0.9999,  # d in (0, 1): the per-step retention of the average
        warmup: bool = True,    # diffusers' warm-up: decay 0, then (1 + s)/(10 + s) caps it (see above)
    ):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}; e.g. 0.999 averages over ~1000 steps")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.module = module  # the live network that update(step) folds in
        # the averages in float32 at least, also for a network held in bf16/fp16: increments (1 − d)(θ − θ_ema)
        # of 1e-4 of a weight vanish below bf16's 2⁻⁸ relative spacing (under Lightning's *-mixed precisions
        # the parameters, and so the averages, are float32 anyway)
        self.shadow_params = [p.detach().to(at_least_float32(p.dtype), copy=True) for p in _float_parameters(module)]
        self._stored: list[torch.Tensor] | None = None
        self._average_copy: nn.Module | None = None

    def current_decay(self) -> float:
        """The decay the next ``step`` uses (diffusers' ``EMAModel.get_decay`` when ``warmup``)."""
        if not self.warmup:
            return self.decay
        # diffusers counts optimization_step += 1 before get_decay, whose step = optimization_step - 1:
        # the next update's s is the number of updates done so far.
        s = self.num_updates
        return 0.0 if s <= 0 else min(self.decay, (1 + s) / (10 + s))

    @torch.no_grad()
    def step(self, module: nn.Module | Iterable[torch.Tensor]) -> None:
        """Fold the current parameters of ``module`` into the average."""
        params = self._matching(module, "step")
        decay = self.current_decay()
        for shadow, param in zip(self.shadow_params, params):
            shadow.lerp_(param.detach().to(shadow.dtype), 1.0 - decay)
        self.num_updates += 1

    # --- the WeightAverage protocol --------------------------------------------------------------------
    def update(self, step: int) -> None:
        """Fold in the live module's parameters after optimiser step ``step`` (the count is not used:
        a classic EMA's decay is per update)."""
        self.step(self.module)

    def keys(self) -> tuple[str, ...]:
        return (EMA_KEY,)

    @torch.no_grad()
    def averaged(self, key: str = EMA_KEY) -> nn.Module:
        """The averaged network (eval mode, buffers from the live module): the EMA's own copy, read it only."""
        if key != EMA_KEY:
            raise KeyError(f"a classic EMA holds one average, {EMA_KEY!r}; got {key!r}")
        if self._average_copy is None:
            self._average_copy = float32_copy(self.module)
        self.copy_to(self._average_copy)
        for b_average, b_live in zip(self._average_copy.buffers(), self.module.buffers()):
            b_average.copy_(b_live)
        return self._average_copy.eval()

    @torch.no_grad()
    def copy_to(self, module: nn.Module | Iterable[torch.Tensor]) -> None:
        """Overwrite the parameters of ``module`` with the averaged ones."""
        for shadow, param in zip(self.shadow_params, self._matching(module, "copy_to")):
            param.copy_(shadow)

    @torch.no_grad()
    def store(self, parameters: nn.Module | Iterable[torch.Tensor]) -> None:
        """Keep a copy of ``parameters`` so that ``restore`` can put them back after ``copy_to``."""
        self._stored = [p.detach().clone() for p in self._matching(parameters, "store")]

    @torch.no_grad()
    def restore(self, parameters: nn.Module | Iterable[torch.Tensor]) -> None:
        """Put back the parameters saved by the last ``store``."""
        if self._stored is None:
            raise RuntimeError("restore() needs a previous store(parameters); call ema.store(model.parameters()) "
                               "before ema.copy_to(model)")
        for saved, param in zip(self._stored, self._matching(parameters, "restore")):
            param.copy_(saved)
        self._stored = None

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow_params": [p.clone() for p in self.shadow_params]}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow_params"]
        if len(shadow) != len(self.shadow_params) or any(
                a.shape != b.shape for a, b in zip(shadow, self.shadow_params)):
            raise ValueError("EMA state_dict does not match this model's parameters (different count or shapes); "
                             "load the state saved for the same architecture")
        self.decay, self.warmup = float(state["decay"]), bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        self.shadow_params = [s.to(device=p.device, dtype=p.dtype).clone() for s, p in zip(shadow, self.shadow_params)]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> EMA:
        """Move the averaged parameters (e.g. next to the model on the GPU)."""
        self.shadow_params = [p.to(device=device, dtype=dtype if dtype is not None else p.dtype)
                              for p in self.shadow_params]
        return self

    def _matching(self, source: nn.Module | Iterable[torch.Tensor], caller: str) -> list[torch.Tensor]:
        params = _float_parameters(source)
        if len(params) != len(self.shadow_params) or any(
                p.shape != s.shape for p, s in zip(params, self.shadow_params)):
            raise ValueError(f"{caller}(): the given parameters do not match the averaged ones "
                             f"({len(params)} vs {len(self.shadow_params)} tensors or different shapes); "
                             "pass the same model the EMA was built from")
        return params
