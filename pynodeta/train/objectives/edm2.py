"""``EDM2Objective``: EDM2's learned-uncertainty loss around its preconditioning (Karras et al. 2024, Sec. 5),
trained with Adam (0.9, 0.99) and the inverse-square-root schedule, evaluated with a power-function EMA."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from pynodeta.diffusion.edm2 import EDM2Precond, edm2_loss

from .base import DiffusionObjective
from .edm import check_lognormal, check_sigma_data

__all__ = ["EDM2Objective"]


class EDM2Objective(DiffusionObjective):
    """EDM's preconditioning with the loss (λ(σ)/e^u(σ))·‖D − x0‖² + u(σ), ln σ ~ N(p_mean, p_std²).

    The uncertainty head u(σ) = linear(MPFourier(c_noise)) is this objective's ``uncertainty`` (its
    parameters are trained with the network's and saved as ``objective.uncertainty.*``); the network stays
    the module's ``model`` alone, so EMA snapshots hold its weights only. The network is
    ``model(c_noise, x, class_labels)``, e.g. ``EDM2UNet``. Sampled by default with Heun, 32 levels (EDM2's 63
    evaluations); the default weight average is the power-function EMA with σ_rel 0.10.
    """

    default_sampler = "heun"
    default_steps = 32

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -0.4, p_std: float = 1.0,
                 logvar_channels: int = 128):
        super().__init__()
        check_sigma_data(sigma_data)
        check_lognormal(p_mean, p_std)
        if isinstance(logvar_channels, bool) or not isinstance(logvar_channels, int) or logvar_channels < 1:
            raise ValueError(f"logvar_channels must be an integer >= 1 (Fourier features of u(σ); EDM2 uses 128), "
                             f"got {logvar_channels!r}")
        self.sigma_data, self.p_mean, self.p_std = float(sigma_data), float(p_mean), float(p_std)
        self.logvar_channels = logvar_channels
        self._precond: EDM2Precond | None = None

    def attach(self, model: nn.Module, sample_shape: Sequence[int]) -> None:
        # The head is drawn here, after the network, as the released code draws it (Precond builds the
        # U-Net, then the head): one seed gives the same initial weights as before this objective existed.
        precond = EDM2Precond(model, self.sigma_data, self.logvar_channels)
        self.uncertainty = nn.ModuleDict({"fourier": precond.logvar_fourier, "linear": precond.logvar_linear})
        object.__setattr__(self, "_precond", precond)  # a view: its network is the module's, its head ours

    def denoiser(self, model: nn.Module) -> EDM2Precond:
        if self._precond is None:
            raise RuntimeError("EDM2Objective.attach(model, sample_shape) must run first; DiffusionModule does this")
        if model is self._precond.net:
            return self._precond
        view = copy.copy(self._precond)  # the same head around another network (e.g. an averaged copy)
        view._modules = {**self._precond._modules, "net": model}
        return view

    def loss(self, model: nn.Module, x0: torch.Tensor, class_labels: torch.Tensor | None = None, *,
             generator: torch.Generator | None = None, step: int | None = None) -> torch.Tensor:
        return edm2_loss(self.denoiser(model), x0, class_labels, p_mean=self.p_mean, p_std=self.p_std,
                         generator=generator)

    def default_optim(self):
        from ..edm2_optim import EDM2Adam

        return EDM2Adam()

    def default_averaging(self):
        from ..averaging import PowerEMAAveraging

        return PowerEMAAveraging()

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}, p_mean={self.p_mean}, p_std={self.p_std}"
