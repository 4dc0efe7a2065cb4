"""Gaussian data N(m, s²I): the exact denoiser, ε-predictor and flow, for tests without training."""

from __future__ import annotations

import math

import torch

from pynodeta.diffusion import DDPMSchedule


class GaussianData:
    """Data x0 ~ N(mean, std² I) in ``dim`` dimensions (float64)."""

    def __init__(self, mean: torch.Tensor, std: float):
        self.mean, self.std = mean.to(torch.float64), float(std)

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x0 | x] for x = x0 + σ n: m + s²/(s² + σ²)(x − m)."""
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return self.mean + self.std**2 / (self.std**2 + sigma**2) * (x - self.mean)

    def eps_model(self, schedule: DDPMSchedule):
        """The exact ε-predictor √(1 − ᾱ)(x_t − √ᾱ m)/(ᾱ s² + 1 − ᾱ) at integer timesteps."""

        def eps(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            alpha = schedule.alphas_cumprod[t].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
            return (1 - alpha).sqrt() * (x - alpha.sqrt() * self.mean) / (alpha * self.std**2 + 1 - alpha)

        return eps

    def fractional_eps_model(self, schedule: DDPMSchedule):
        """The exact ε-predictor at fractional timesteps t, whose σ is interpolated linearly in log σ between
        the grid's neighbours, as ``DenoiserFromEpsilon(timestep="interpolate")`` maps σ to t: the denoiser
        seen through it is then the exact Gaussian one at every σ of the schedule's range."""
        log_sigmas = schedule.sigmas.log()

        def eps(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            t = t.to(torch.float64)
            low = t.floor().long().clamp(0, len(log_sigmas) - 1)
            high = (low + 1).clamp(max=len(log_sigmas) - 1)
            sigma = torch.lerp(log_sigmas[low], log_sigmas[high], t - low).exp()
            alpha = (1 / (1 + sigma**2)).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
            return (1 - alpha).sqrt() * (x - alpha.sqrt() * self.mean) / (alpha * self.std**2 + 1 - alpha)

        return eps

    def noisy(self, n: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
        """Samples of the data convolved with N(0, σ²I): N(m, (s² + σ²) I)."""
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.mean + math.sqrt(self.std**2 + sigma**2) * z

    def flow(self, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """The exact probability-flow map: x − m scales by √((s² + σ_to²)/(s² + σ_from²))."""
        scale = math.sqrt((self.std**2 + sigma_to**2) / (self.std**2 + sigma_from**2))
        return self.mean + scale * (x - self.mean)

    def log_density(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """log N(x; m, (s² + σ²) I), shape (batch,)."""
        var = self.std**2 + sigma**2
        return -0.5 * (((x - self.mean) ** 2).sum(dim=1) / var + self.dim * math.log(2 * math.pi * var))


def standard_case() -> GaussianData:
    return GaussianData(torch.tensor([0.7, -0.4]), std=0.5)


class CorrelatedGaussian:
    """Data x0 ~ N(mean, cov) with a full covariance: the drift's Jacobian is not diagonal."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor):
        self.mean, self.cov = mean.to(torch.float64), cov.to(torch.float64)

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x0 | x] = m + Σ(Σ + σ²I)⁻¹(x − m), one σ per sample."""
        eye = torch.eye(len(self.mean), dtype=x.dtype)
        gains = self.cov @ torch.linalg.inv(self.cov + sigma[:, None, None] ** 2 * eye)
        return self.mean + ((x - self.mean)[:, None, :] @ gains.transpose(1, 2))[:, 0]

    def log_density(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        cov = self.cov + sigma**2 * torch.eye(len(self.mean), dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.mean, cov).log_prob(x)


def correlated_case() -> CorrelatedGaussian:
    a = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.5, 0.0], [-0.4, 0.3, 0.2]], dtype=torch.float64)
    return CorrelatedGaussian(torch.zeros(3), a @ a.T)  # mean 0: the likelihood's prior N(0, σ_max²) fits
