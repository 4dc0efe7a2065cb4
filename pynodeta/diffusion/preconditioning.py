"""EDM preconditioning (Karras et al. 2022, Table 1) and the EDM training loss."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._random import randn
from ._checks import Denoiser

__all__ = ["EDMPrecond", "edm_loss", "edm_loss_weight"]


class EDMPrecond(nn.Module):
    """D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_noise(σ), c_in(σ)·x) around a time-first network F(t, x).

    c_skip = σ_d²/(σ² + σ_d²), c_out = σσ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²), c_noise = ln(σ)/4
    (EDM Table 1): the network sees unit-variance input and predicts a unit-variance target at every σ.

    Args:
        net: ``net(c_noise, x_in) -> F``, c_noise of shape (batch,), F of x's shape.
        sigma_data: the data's standard deviation (0.5 for images in [-1, 1]).

    It accepts every σ > 0: ``sigma_min = 0`` and ``sigma_max = inf`` declare that range (NVlabs EDM's
    attributes), so ``log_likelihood`` uses EDM's 0.002 and 80 by default.
    """

    sigma_min: float = 0.0
    sigma_max: float = math.inf

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0 (the data's standard deviation, EDM uses 0.5), got {sigma_data}")
        self.net, self.sigma_data = net, float(sigma_data)

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) at each σ, each of sigma's shape."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x: (batch, ...) noisy data; sigma: (batch,) or scalar noise levels (> 0) → x̂0, shape of x."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        if (sigma <= 0).any():
            raise ValueError(f"sigma must be > 0 (c_noise = ln σ/4), got minimum {float(sigma.min())}")
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        shape = (-1, *([1] * (x.ndim - 1)))
        out = self.net(c_noise, c_in.reshape(shape) * x)
        return c_skip.reshape(shape) * x + c_out.reshape(shape) * out


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """λ(σ) = (σ² + σ_d²)/(σσ_d)² (EDM Eq. 8 with Table 1): the ideal denoiser's loss is 1 at every σ."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss(denoiser: Denoiser, x0: torch.Tensor, *, p_mean: float = -1.2, p_std: float = 1.2,
             sigma_data: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """EDM's training loss per sample, shape (batch,): λ(σ)·mean‖D(x0 + σn, σ) − x0‖², ln σ ~ N(p_mean, p_std²).

    EDM uses p_mean = −1.2, p_std = 1.2; EDM2 uses −0.4, 1.0. ``sigma_data`` defaults to the
    denoiser's own (an ``EDMPrecond``), else 0.5.
    """
    if not p_std > 0:
        raise ValueError(f"p_std must be > 0, got {p_std}")
    sigma_data = getattr(denoiser, "sigma_data", 0.5) if sigma_data is None else sigma_data
    batch = x0.shape[0]
    log_sigma = p_mean + p_std * randn(batch, generator=generator, dtype=x0.dtype, device=x0.device)
    sigma = log_sigma.exp()
    noise = randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    noisy = x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * noise
    squared_error = (denoiser(noisy, sigma) - x0) ** 2
    return edm_loss_weight(sigma, sigma_data) * squared_error.reshape(batch, -1).mean(dim=1)
