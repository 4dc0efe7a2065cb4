"""``DenoiserFromEpsilon``: a DDPM ε-network seen as an EDM/k-diffusion denoiser ``D(x, σ)``."""

from __future__ import annotations

import torch
from torch import nn

from ..ode.backends.graphed_step import capturing
from ._known_sigmas import as_levels, sigma_bounds
from .schedules import DDPMSchedule

__all__ = ["DenoiserFromEpsilon", "TIMESTEP_MODES"]

TIMESTEP_MODES = ("nearest", "interpolate")


class DenoiserFromEpsilon(nn.Module):
    """D(x, σ) = x − σ·ε(t(σ), x/√(1 + σ²)) (k-diffusion's ``DiscreteEpsDDPMDenoiser``, VP → VE).

    A VE state x at noise level σ is the VP state x_t = x·√ᾱ_t with σ = √((1 − ᾱ_t)/ᾱ_t), i.e.
    √ᾱ = 1/√(1 + σ²). ``timestep="nearest"`` hands the network the integer timestep whose σ_t is
    nearest in log σ; ``"interpolate"`` hands it the fractional timestep interpolated linearly in
    log σ (a float tensor; fine for sinusoidal embeddings). σ outside [sigma_min, sigma_max] of the
    schedule is refused, not clamped: build the grid with ``karras_sigmas(n, den.sigma_min, den.sigma_max)``.
    ``log_likelihood`` and ``probability_flow`` read the same two attributes: the likelihood integrates
    over [sigma_min, sigma_max] by default and refuses limits outside it.
    """

    def __init__(self, eps_model: nn.Module, schedule: DDPMSchedule, timestep: str = "nearest"):
        super().__init__()
        if timestep not in TIMESTEP_MODES:
            raise ValueError(f"unknown timestep mode {timestep!r}; choose one of {list(TIMESTEP_MODES)}")
        self.eps_model, self.schedule, self.timestep = eps_model, schedule, timestep
        self.register_buffer("log_sigmas", schedule.sigmas.log(), persistent=False)

    @property
    def sigma_min(self) -> float:
        """σ_0, the smallest noise level of the schedule."""
        return float(self.schedule.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """σ_{T−1}, the largest noise level of the schedule."""
        return float(self.schedule.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Timestep of each noise level: int64 (nearest) or float (interpolated in log σ), shape of sigma."""
        sigma = torch.as_tensor(sigma)
        self._check_sigma_range(sigma)
        return self._timesteps(sigma)

    def sigma_and_timesteps(self, sigma: torch.Tensor | float, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """σ as a (batch,) tensor of x's dtype and device, and its timesteps (``sigma_to_t``)."""
        given = as_levels(sigma, x)
        self._check_sigma_range(given)  # before the expand: a sampler's σ keeps its known bounds
        sigma = given.expand(x.shape[0])
        return sigma, self._timesteps(sigma)

    def _check_sigma_range(self, sigma: torch.Tensor) -> None:
        # a captured step reads nothing back to the host: probability_flow has checked its span before solving
        if not sigma.numel() or capturing():
            return
        lowest, highest = sigma_bounds(sigma)
        if not self.sigma_min * (1 - 1e-6) <= lowest <= highest <= self.sigma_max * (1 + 1e-6):
            raise ValueError(f"sigma must lie in the schedule's range [{self.sigma_min:.6g}, {self.sigma_max:.6g}], "
                             f"got [{lowest:.6g}, {highest:.6g}]; build the noise levels "
                             "with karras_sigmas(n, denoiser.sigma_min, denoiser.sigma_max)")

    def _timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigmas = self.log_sigmas.to(device=sigma.device)
        log_sigma = sigma.to(log_sigmas.dtype).log()
        if len(log_sigmas) == 1:
            return torch.zeros_like(sigma, dtype=torch.long)
        upper = torch.searchsorted(log_sigmas, log_sigma.contiguous()).clamp(1, len(log_sigmas) - 1)
        lower = upper - 1
        weight = ((log_sigma - log_sigmas[lower]) / (log_sigmas[upper] - log_sigmas[lower])).clamp(0, 1)
        if self.timestep == "nearest":
            return torch.where(weight > 0.5, upper, lower)
        return (lower + weight).to(sigma.dtype if sigma.is_floating_point() else torch.float64)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, ...) VE state; sigma: (batch,) or scalar noise levels → x̂0, shape of x.

        ``class_labels`` (one-hot, (batch, num_classes)) reach the network as ``eps_model(t, x,
        class_labels=...)``; without them it is called with two arguments only.
        """
        sigma, t = self.sigma_and_timesteps(sigma, x)
        sigma_b = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        x_vp = x / (1 + sigma_b**2).sqrt()
        if class_labels is None:
            eps = self.eps_model(t, x_vp)
        else:
            eps = self.eps_model(t, x_vp, class_labels=class_labels)
        return x - sigma_b * eps.to(x.dtype)  # in x's dtype also when the network ran under autocast
