"""EDM2 preconditioning with learned uncertainty, its loss and learning-rate schedule (Karras et al. 2024,
"Analyzing and Improving the Training Dynamics of Diffusion Models", Sec. 5 and App. B; numerics as
NVlabs/edm2 networks_edm2.py Precond and training_loop.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

from pynodeta.nn.mp import MPConv, MPFourier
from pynodeta.nn.precision import at_least_float32, autocast_off

from .._random import randn
from .preconditioning import EDMPrecond, call_network, edm_loss_weight, sigma_per_sample

__all__ = ["EDM2_ADAM_BETAS", "EDM2Precond", "edm2_learning_rate", "edm2_loss"]

# Adam's β₁, β₂ in EDM2 (training_loop.py); eps stays PyTorch's 1e-8.
EDM2_ADAM_BETAS = (0.9, 0.99)


class EDM2Precond(EDMPrecond):
    """D(x, σ) = c_skip x + c_out F(c_noise, c_in x, class_labels), EDM's coefficients (``EDMPrecond``),
    plus the uncertainty u(σ) = linear(MPFourier(c_noise)) of the loss (paper Eq. 21).

    ``unet``: ``unet(c_noise, x_in, class_labels=...)``, e.g. ``EDM2UNet``; called without
    ``class_labels`` when none are given, so an unconditional ``forward(t, x)`` works too. As a
    denoiser, ``self(x, sigma, class_labels=None)`` with x (batch, ...), sigma a scalar, (batch,) or
    (batch, 1, ..., 1), class_labels (batch, num_classes) one-hot rows (all-zero: unconditional),
    returns x̂0 (and u (batch,) with return_logvar).
    """

    def __init__(
        self,
        unet: nn.Module,              # F: forward(c_noise, x[, class_labels=None])
        sigma_data: float = 0.5,      # the data's standard deviation
        logvar_channels: int = 128,   # Fourier features of the uncertainty head
    ):
        super().__init__(unet, sigma_data)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=())

    @property
    def unet(self) -> nn.Module:
        return self.net

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                return_logvar: bool = False):
        x = x.to(at_least_float32(x.dtype))  # float32 around the network, as EDMPrecond (Precond.forward)
        sigma = sigma_per_sample(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        shape = (-1, *([1] * (x.ndim - 1)))
        out = call_network(self.net, c_noise, c_in.reshape(shape) * x, class_labels)
        denoised = c_skip.reshape(shape) * x + c_out.reshape(shape) * out.to(x.dtype)
        if return_logvar:
            # u(σ) in float32 under autocast too: the released Precond.forward computes it from the float32
            # c_noise outside the fp16 network (logvar_linear(logvar_fourier(c_noise))), and exp(u) divides the loss
            with autocast_off(x):
                return denoised, self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1)
        return denoised


def edm2_loss(precond: EDM2Precond, x0: torch.Tensor, class_labels: torch.Tensor | None = None, *,
              p_mean: float = -0.4, p_std: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample loss (batch,): mean over elements of (λ(σ)/e^u(σ)) (D − x0)² + u(σ), ln σ ~ N(p_mean, p_std²).

    The uncertainty u(σ) learns ln of the expected weighted error at σ, which makes the loss of all
    noise levels equally large (paper Sec. 5). As the released code, u is added per element; it sums
    over elements where we average, which only rescales the gradient by the element count.
    """
    if not p_std > 0:
        raise ValueError(f"p_std must be > 0, got {p_std}")
    batch = x0.shape[0]
    log_sigma = p_mean + p_std * randn(batch, generator=generator, dtype=x0.dtype, device=x0.device)
    sigma = log_sigma.exp()
    noise = randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    shape = (-1, *([1] * (x0.ndim - 1)))
    denoised, logvar = precond(x0 + sigma.reshape(shape) * noise, sigma, class_labels=class_labels,
                               return_logvar=True)
    weight = edm_loss_weight(sigma, precond.sigma_data) / logvar.exp()
    squared_error = (denoised - x0).pow(2).reshape(batch, -1).mean(dim=1)
    return weight * squared_error + logvar


def edm2_learning_rate(step: int, ref_lr: float = 0.01, ref_steps: int = 70_000, warmup_steps: int = 0) -> float:
    """ref_lr / √max(step/ref_steps, 1) · min(step/warmup_steps, 1) (paper Eq. 19 and its warm-up).

    The released code counts images (ref_batches · batch_size, rampup_Mimg); at a fixed batch size
    that is the same schedule in optimiser steps. ``ref_steps = 0`` or ``warmup_steps = 0`` disables a part."""
    if step < 0 or ref_steps < 0 or warmup_steps < 0 or not ref_lr > 0:
        raise ValueError(f"need step, ref_steps, warmup_steps >= 0 and ref_lr > 0, got step={step}, "
                         f"ref_steps={ref_steps}, warmup_steps={warmup_steps}, ref_lr={ref_lr}")
    lr = ref_lr
    if ref_steps > 0:
        lr /= math.sqrt(max(step / ref_steps, 1.0))
    if warmup_steps > 0:
        lr *= min(step / warmup_steps, 1.0)
    return lr
