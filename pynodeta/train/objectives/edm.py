"""``EDMObjective``: EDM's preconditioning and loss (Karras et al. 2022, Table 1 and Eq. 8)."""

from __future__ import annotations

import torch
from torch import nn

from pynodeta.diffusion.preconditioning import EDMPrecond, edm_loss

from .base import DiffusionObjective

__all__ = ["EDMObjective"]


def check_lognormal(p_mean: float, p_std: float) -> None:
    if not (isinstance(p_mean, (int, float)) and abs(p_mean) < float("inf")):
        raise ValueError(f"p_mean must be a finite number (ln σ ~ N(p_mean, p_std²)), got {p_mean!r}")
    if not (isinstance(p_std, (int, float)) and 0 < p_std < float("inf")):
        raise ValueError(f"p_std must be a finite number > 0 (ln σ ~ N(p_mean, p_std²)), got {p_std!r}")


def check_sigma_data(sigma_data: float) -> None:
    if not (isinstance(sigma_data, (int, float)) and 0 < sigma_data < float("inf")):
        raise ValueError(f"sigma_data must be a finite number > 0 (the data's standard deviation), got {sigma_data!r}")


class EDMObjective(DiffusionObjective):
    """D(x, σ) = c_skip x + c_out F(c_noise, c_in x) with ln σ ~ N(p_mean, p_std²) in training and the loss
    weight λ(σ) = (σ² + σ_d²)/(σσ_d)². The network is ``model(c_noise, x[, class_labels])``, c_noise = ln σ/4.
    Sampled by default with Heun, 18 levels (35 network evaluations), between σ 0.002 and 80."""

    default_sampler = "heun"
    default_steps = 18

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2):
        super().__init__()
        check_sigma_data(sigma_data)
        check_lognormal(p_mean, p_std)
        self.sigma_data, self.p_mean, self.p_std = float(sigma_data), float(p_mean), float(p_std)

    def denoiser(self, model: nn.Module) -> nn.Module:
        return EDMPrecond(model, sigma_data=self.sigma_data)

    def loss(self, model: nn.Module, x0: torch.Tensor, class_labels: torch.Tensor | None = None, *,
             generator: torch.Generator | None = None, step: int | None = None) -> torch.Tensor:
        return edm_loss(self.denoiser(model), x0, class_labels=class_labels, p_mean=self.p_mean, p_std=self.p_std,
                        sigma_data=self.sigma_data, generator=generator)

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}, p_mean={self.p_mean}, p_std={self.p_std}"
