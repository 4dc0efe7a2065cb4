"""EDM preconditioning (Karras et al. 2022, Table 1) and the EDM training loss."""

from __future__ import annotations

import math

import torch
from torch import nn

from pynodeta.nn.precision import at_least_float32

from .._random import randn
from ..ode.backends.graphed_step import capturing
from ._checks import Denoiser
from ._known_sigmas import as_levels, known_bounds

__all__ = ["EDMPrecond", "edm_loss", "edm_loss_weight"]


# EDM's sampling range of σ (Karras et al. 2022, Table 1): a network under EDMPrecond sees
# c_noise = ln(σ)/4 over [ln(0.002)/4, ln(80)/4] ≈ [−1.55, 1.10].
EDM_SIGMA_RANGE = (0.002, 80.0)
# A network's declared time range and that c_noise span must agree within this factor (see check_time_range).
_TIME_RANGE_FACTOR = 10.0


class EDMPrecond(nn.Module):
    """D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_noise(σ), c_in(σ)·x) around a time-first network F(t, x).

    Mixed precision as NVlabs/edm2 (networks_edm2.py Precond.forward): x, σ and the coefficients are float32
    (x.to(torch.float32)), only the network may run in half precision (under autocast here, where the
    released code casts x_in to fp16), and its output is cast back to float32 before the skip connection
    (F_x.to(torch.float32)), so D and every loss and sampler state built on it are float32.

    c_skip = σ_d²/(σ² + σ_d²), c_out = σσ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²), c_noise = ln(σ)/4
    (EDM Table 1): the network sees unit-variance input and predicts a unit-variance target at every σ.

    Args:
        net: ``net(c_noise, x_in) -> F``, c_noise of shape (batch,), F of x's shape; called as
            ``net(c_noise, x_in, class_labels=class_labels)`` when class labels are given.
        sigma_data: the data's standard deviation (0.5 for images in [-1, 1]).

    A network that declares ``time_range`` (the span of t its time embedding is laid out for, e.g.
    ``DDPMUNet``: [0, 1000/time_scale), ``EDM2UNet``: EDM's c_noise range) is checked on construction:
    c_noise over EDM's σ ∈ [0.002, 80] spans about 2.65, and a network laid out for DDPM's 1000
    timesteps would barely see σ change. Such a network raises a ValueError naming the fix
    (``DDPMUNet(time_scale=250)``) rather than being rescaled behind the user's back.

    It accepts every σ > 0: ``sigma_min = 0`` and ``sigma_max = inf`` declare that range (NVlabs EDM's
    attributes), so ``log_likelihood`` uses EDM's 0.002 and 80 by default.
    """

    sigma_min: float = 0.0
    sigma_max: float = math.inf

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0 (the data's standard deviation, EDM uses 0.5), got {sigma_data}")
        check_time_range(net)
        self.net, self.sigma_data = net, float(sigma_data)

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) at each σ, each of sigma's shape."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, ...) noisy data; sigma: a scalar, (batch,) or (batch, 1, ..., 1) noise levels (> 0);
        class_labels: (batch, num_classes) one-hot rows (all-zero: unconditional) or None → x̂0, shape of x
        (float32 for half-precision x)."""
        x = x.to(at_least_float32(x.dtype))
        sigma = sigma_per_sample(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        shape = (-1, *([1] * (x.ndim - 1)))
        out = call_network(self.net, c_noise, c_in.reshape(shape) * x, class_labels)
        return c_skip.reshape(shape) * x + c_out.reshape(shape) * out.to(x.dtype)


def sigma_per_sample(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """σ as a (batch,) tensor of x's dtype from a scalar, (batch,) or (batch, 1, ..., 1) (NVlabs' loss)."""
    given = as_levels(sigma, x)
    batch = x.shape[0]
    if given.numel() == 1 and given.dim() <= 1:
        sigma = given.reshape(()).expand(batch)
    elif given.dim() >= 1 and given.shape[0] == batch and given.numel() == batch and given.dim() <= x.ndim:
        sigma = given.reshape(batch)  # (batch,) or (batch, 1, ..., 1)
    else:
        raise ValueError(f"sigma must be a scalar, ({batch},) or ({batch}, 1, ..., 1) for x of shape "
                         f"{tuple(x.shape)}, got shape {tuple(given.shape)}")
    # a captured step reads nothing back (probability_flow checks its span); a sampler's σ has known bounds
    if batch and not capturing():
        known = known_bounds(given)
        if not (known[0] > 0 if known is not None else bool((given > 0).all())):  # NaN fails too
            raise ValueError(f"sigma must be > 0 (c_noise = ln σ/4), got minimum {float(given.min())}")
    return sigma


def call_network(net, c_noise: torch.Tensor, x_in: torch.Tensor, class_labels: torch.Tensor | None):
    """``net(c_noise, x_in)``, with ``class_labels=`` only when given: an unconditional forward(t, x) keeps working."""
    if class_labels is None:
        return net(c_noise, x_in)
    return net(c_noise, x_in, class_labels=class_labels)


def check_time_range(net, sigma_range: tuple[float, float] = EDM_SIGMA_RANGE) -> None:
    """Raise if ``net.time_range`` (if it declares one) does not fit c_noise = ln(σ)/4 over ``sigma_range``.

    A sinusoidal embedding is shift-invariant in what it can tell apart, not scale-invariant: what
    must agree is the width of the two spans, within a factor 10.
    """
    declared = getattr(net, "time_range", None)
    if declared is None:
        return
    low, high = (float(v) for v in declared)
    c_low, c_high = (math.log(s) / 4 for s in sigma_range)
    ratio = (c_high - c_low) / (high - low)
    if 1 / _TIME_RANGE_FACTOR <= ratio <= _TIME_RANGE_FACTOR:
        return
    scale = getattr(net, "time_scale", None)
    fix = "" if scale is None else (
        f"; build it with time_scale=250 (now {scale:g}), so that c_noise·time_scale spans about 660 of the "
        f"1000 DDPM timesteps its embedding is laid out for")
    raise ValueError(
        f"{type(net).__name__} declares a time range [{low:g}, {high:g}), but EDMPrecond passes it "
        f"c_noise = ln(σ)/4 ∈ [{c_low:.3g}, {c_high:.3g}] for σ ∈ [{sigma_range[0]:g}, {sigma_range[1]:g}], "
        f"{ratio:.3g} times that width: its time embedding would "
        f"{'barely change with σ' if ratio < 1 else 'wrap around many times over σ'}{fix}")


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """λ(σ) = (σ² + σ_d²)/(σσ_d)² (EDM Eq. 8 with Table 1): the ideal denoiser's loss is 1 at every σ."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss(denoiser: Denoiser, x0: torch.Tensor, class_labels: torch.Tensor | None = None, *,
             p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """EDM's training loss per sample, shape (batch,): λ(σ)·mean‖D(x0 + σn, σ) − x0‖², ln σ ~ N(p_mean, p_std²).

    EDM uses p_mean = −1.2, p_std = 1.2; EDM2 uses −0.4, 1.0. ``sigma_data`` defaults to the
    denoiser's own (an ``EDMPrecond``), else 0.5. ``class_labels`` ((batch, num_classes) one-hot
    rows, all-zero: unconditional) reach the denoiser as ``denoiser(x, sigma, class_labels=...)``;
    without them it is called with two arguments.
    """
    if not p_std > 0:
        raise ValueError(f"p_std must be > 0, got {p_std}")
    sigma_data = getattr(denoiser, "sigma_data", 0.5) if sigma_data is None else sigma_data
    batch = x0.shape[0]
    log_sigma = p_mean + p_std * randn(batch, generator=generator, dtype=x0.dtype, device=x0.device)
    sigma = log_sigma.exp()
    noise = randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    noisy = x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * noise
    denoised = denoiser(noisy, sigma) if class_labels is None else denoiser(noisy, sigma, class_labels=class_labels)
    squared_error = (denoised - x0) ** 2
    return edm_loss_weight(sigma, sigma_data) * squared_error.reshape(batch, -1).mean(dim=1)
