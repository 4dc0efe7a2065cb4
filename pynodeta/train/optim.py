"""The papers' optimisers, schedules and gradient clipping as typed presets.

A preset is chosen in a config by class path (``class_path: pynodeta.train.TABNAdamW``) and its
fields are checked by jsonargparse, so a misspelt option fails before training starts.
``build(module)`` returns what ``LightningModule.configure_optimizers`` returns (one optimiser,
one with several parameter groups from ``parameter_groups(module)``, or a list of several
optimisers); ``clip(module)`` runs between backward and the optimiser step.
"""

from __future__ import annotations

import torch
from torch import nn

from pynodeta.nn import TABatchNorm

__all__ = ["OptimizerPreset", "AdamWPreset", "PlateauSGD", "TABNAdamW", "tabn_affine_parameters", "clip_grad_norms"]


def tabn_affine_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The per-grid-point γ*_m, β*_m of every TA-BN layer in ``model`` (empty without TA-BN)."""
    params = []
    for module in model.modules():
        if isinstance(module, TABatchNorm) and module.affine:
            params += [module.weight, module.bias]
    return params


def trained_parameters(module: nn.Module) -> list[nn.Parameter]:
    """What a diffusion preset optimises: ``module.trained_parameters()`` where the module names them (a
    ``DiffusionModule``: the network and what its objective learns beside it, never a timestep sampler's
    policy, which has its own optimiser), else every trainable parameter."""
    named = getattr(module, "trained_parameters", None)
    return list(named()) if callable(named) else [p for p in module.parameters() if p.requires_grad]


def clip_grad_norms(model: nn.Module, max_norm: float | None, tabn_max_norm: float | None) -> None:
    """Clip the global gradient norm to ``max_norm``, then TA-BN's γ/β group to ``tabn_max_norm``.

    The TA-BN code clips all parameters at 10 and the γ/β group again at 1: γ*_m and β*_m of grid
    points the solver rarely visits get few, noisy gradients. ``None`` skips a clip.
    """
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    if tabn_max_norm is not None:
        affine = [p for p in tabn_affine_parameters(model) if p.grad is not None]
        if affine:
            torch.nn.utils.clip_grad_norm_(affine, tabn_max_norm)


def _check_positive(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 (or None to disable), got {value}")


def _check_betas(betas) -> None:
    if not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must lie in [0, 1), got {tuple(betas)}")


class OptimizerPreset:
    """An optimiser, its learning-rate schedule and its gradient clipping.

    A subclass implements ``build``; it may override ``parameter_groups`` to give groups their own
    options (e.g. no weight decay on gains and biases), or return a list of several optimiser
    configurations from ``build`` (the LightningModule must then optimise manually).
    """

    max_norm: float | None = None
    tabn_max_norm: float | None = None

    def build(self, module: nn.Module) -> dict | list:
        """The ``configure_optimizers`` return value for a LightningModule ``module``."""
        raise NotImplementedError

    def parameter_groups(self, module: nn.Module) -> list[dict]:
        """The optimiser's parameter groups: by default one group holding every parameter."""
        return [{"params": list(module.parameters())}]

    def clip(self, model: nn.Module) -> None:
        """Clip ``model``'s gradients in place (called after backward, before the optimiser step)."""
        clip_grad_norms(model, self.max_norm, self.tabn_max_norm)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class AdamWPreset(OptimizerPreset):
    """AdamW at a constant learning rate, optionally with global gradient-norm clipping."""

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        max_norm: float | None = None,  # global gradient-norm clip (None: no clipping)
    ):
        _check_positive(lr=lr, max_norm=max_norm)
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        self.lr, self.weight_decay, self.betas, self.max_norm = lr, weight_decay, tuple(betas), max_norm

    def build(self, module: nn.Module) -> dict:
        optimizer = torch.optim.AdamW(self.parameter_groups(module), lr=self.lr, betas=self.betas,
                                      weight_decay=self.weight_decay)
        return {"optimizer": optimizer}


class PlateauSGD(OptimizerPreset):
    """Vanishing-timestep-embedding paper's NODE setup: SGD with momentum, decay on a plateau."""

    def __init__(
        self,
        lr: float = 0.1,                # initial learning rate
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        patience: int = 15,             # epochs without improvement of `monitor` before decaying
        factor: float = 0.1,            # learning-rate multiplier at each decay
        monitor: str = "val/loss",      # logged metric the plateau is measured on (minimised)
        max_norm: float | None = None,  # global gradient-norm clip (None: no clipping, as in the paper)
    ):
        _check_positive(lr=lr, factor=factor, max_norm=max_norm)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0 or patience < 0:
            raise ValueError(f"weight_decay and patience must be >= 0, got {weight_decay} and {patience}")
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.patience, self.factor, self.monitor, self.max_norm = patience, factor, monitor, max_norm

    def build(self, module) -> dict:
        optimizer = torch.optim.SGD(
            self.parameter_groups(module), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.factor, patience=self.patience
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"},
        }


class TABNAdamW(OptimizerPreset):
    """TA-BN paper's setup: AdamW, step decay, clipping at 10 overall and 1 on TA-BN's γ/β."""

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 2e-2,
        step_epochs: int | None = None,      # epochs between decays; None: half of trainer.max_epochs
        gamma: float = 0.1,                  # learning-rate multiplier at each decay
        max_norm: float | None = 10.0,       # global gradient-norm clip
        tabn_max_norm: float | None = 1.0,   # clip of the TA-BN γ*/β* group, applied after the global one
    ):
        _check_positive(lr=lr, gamma=gamma, max_norm=max_norm, tabn_max_norm=tabn_max_norm)
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if step_epochs is not None and step_epochs < 1:
            raise ValueError(f"step_epochs must be >= 1 or None, got {step_epochs}")
        self.lr, self.weight_decay, self.step_epochs, self.gamma = lr, weight_decay, step_epochs, gamma
        self.max_norm, self.tabn_max_norm = max_norm, tabn_max_norm

    def build(self, module) -> dict:
        optimizer = torch.optim.AdamW(self.parameter_groups(module), lr=self.lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, self._step_epochs(module), gamma=self.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def _step_epochs(self, module) -> int:
        if self.step_epochs is not None:
            return self.step_epochs
        max_epochs = module.trainer.max_epochs if module._trainer is not None else None
        if max_epochs is None or max_epochs < 1:
            raise ValueError(
                "TABNAdamW decays at half of trainer.max_epochs, which is not set; set trainer.max_epochs "
                "or the preset's step_epochs"
            )
        return max(1, max_epochs // 2)
