"""Noise schedules: EDM's noise levels (``karras_sigmas``) and DDPM's discrete β schedules (``DDPMSchedule``).

Timestep convention (Improved-DDPM's): ``t`` is an integer in ``[0, T)``; index ``t`` is the paper's
step ``t + 1``, so ``t = 0`` is the least noisy latent x_1 and ``t = T − 1`` is x_T.
"""

from __future__ import annotations

import math

import torch

from .._host_copies import to_device
from ._gaussian import LN2, discretized_gaussian_log_likelihood, mean_over_data_dims, normal_kl

__all__ = ["karras_sigmas", "DDPMSchedule", "BETA_SCHEDULES", "VARIANCES"]

BETA_SCHEDULES = ("linear", "cosine", "quad")
VARIANCES = ("fixed_small", "fixed_large")


def karras_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n + 1`` decreasing noise levels, EDM Eq. 5, then an exact 0 (k-diffusion's ``get_sigmas_karras``).

    σ_i = (σ_max^{1/ρ} + i/(n − 1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for i = 0 … n − 1, and σ_n = 0.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of noise levels before 0) must be an integer >= 1, got {n!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0 (EDM uses 7), got {rho}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    inv_rho = 1.0 / rho
    sigmas = (sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(dtype=dtype, device=device)


def _betas(schedule: str, num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if schedule == "quad":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    # cosine (Nichol & Dhariwal 2021, Eq. 17): ᾱ(t) = f(t)/f(0), β_t = 1 − ᾱ(t)/ᾱ(t − 1) clipped at 0.999
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


class DDPMSchedule:
    """A discrete DDPM noise schedule with its forward process, posterior and variational-bound terms.

    Args:
        num_timesteps: T, the number of diffusion steps (>= 1).
        beta_schedule: "linear" (β from beta_start to beta_end), "quad" (√β linear, as Kim et al. 2024),
            or "cosine" (Improved-DDPM; ignores beta_start/beta_end).
        beta_start, beta_end: the first and last β of the linear and quad schedules, 0 < start <= end < 1.

    All tables are float64 on the CPU, shape (T,); methods cast to the dtype and device of their input.
    """

    def __init__(self, num_timesteps: int = 1000, beta_schedule: str = "linear",
                 beta_start: float = 1e-4, beta_end: float = 0.02):
        if not isinstance(num_timesteps, int) or num_timesteps < 1:
            raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta_schedule {beta_schedule!r}; choose one of {list(BETA_SCHEDULES)}")
        if beta_schedule != "cosine" and not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        self.num_timesteps, self.beta_schedule = num_timesteps, beta_schedule
        self._set_tables(_betas(beta_schedule, num_timesteps, beta_start, beta_end))

    @classmethod
    def from_betas(cls, betas) -> DDPMSchedule:
        """The schedule of given β_t (T,), e.g. a diffusers scheduler's ``betas``; ``beta_schedule`` is "custom"."""
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().reshape(-1)
        if betas.numel() < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must be a non-empty sequence of numbers in (0, 1), got {betas.numel()} values in "
                             f"[{float(betas.min()) if betas.numel() else 'n/a'}, "
                             f"{float(betas.max()) if betas.numel() else 'n/a'}]")
        schedule = cls.__new__(cls)
        schedule.num_timesteps, schedule.beta_schedule = betas.numel(), "custom"
        schedule._set_tables(betas)
        return schedule

    def _set_tables(self, betas: torch.Tensor) -> None:
        self.betas = betas
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) (DDPM Eq. 7); 0 at t = 0, so its log is clipped to β̃_1 there
        self.posterior_variance = self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        first = self.posterior_variance[1] if self.num_timesteps > 1 else self.betas[0]
        self.posterior_log_variance = torch.log(torch.cat([first.reshape(1), self.posterior_variance[1:]]))
        self.posterior_mean_coef_x0 = self.betas * self.alphas_cumprod_prev.sqrt() / (1 - self.alphas_cumprod)
        self.posterior_mean_coef_xt = (1 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1 - self.alphas_cumprod)

    def __repr__(self) -> str:
        return f"DDPMSchedule(num_timesteps={self.num_timesteps}, beta_schedule={self.beta_schedule!r})"

    @property
    def sigmas(self) -> torch.Tensor:
        """The VE noise level of each timestep, σ_t = √((1 − ᾱ_t)/ᾱ_t), increasing in t, shape (T,)."""
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    def check_timesteps(self, t: torch.Tensor | int, batch: int | None = None) -> torch.Tensor:
        """``t`` as an int64 tensor of shape (batch,), refusing non-integers and values outside [0, T)."""
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"t must be an integer tensor of timesteps in [0, {self.num_timesteps}), "
                             f"got dtype {t.dtype}")
        if batch is not None:
            t = t.expand(batch) if t.ndim == 0 else t
            if t.shape != (batch,):
                raise ValueError(f"t must have shape (batch,) = ({batch},), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"t must lie in [0, T) = [0, {self.num_timesteps}), got values in "
                             f"[{int(t.min())}, {int(t.max())}]")
        return t.long()

    def _at(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] shaped (batch, 1, 1, ...) to broadcast against ``like``."""
        t = self.check_timesteps(t, like.shape[0])
        values = to_device(table[t.cpu()].to(like.dtype), like.device)  # queued: no wait for the GPU per step
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε (DDPM Eq. 4)."""
        signal, noise_scale = self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod
        return self._at(signal, t, x0) * x0 + self._at(noise_scale, t, x0) * noise

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t/(1 − ᾱ_t), float64, shape of t."""
        t = self.check_timesteps(t)
        return (self.alphas_cumprod / (1 - self.alphas_cumprod))[t.cpu()].to(t.device)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂0 = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t."""
        signal, noise_scale = self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod
        return (x_t - self._at(noise_scale, t, x_t) * eps) / self._at(signal, t, x_t)

    def posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """q(x_{t−1} | x_t, x0) (DDPM Eqs. 6–7): (mean, variance, log-variance clipped at t = 0)."""
        mean = self._at(self.posterior_mean_coef_x0, t, x_t) * x0 + self._at(self.posterior_mean_coef_xt, t, x_t) * x_t
        return mean, self._at(self.posterior_variance, t, x_t), self._at(self.posterior_log_variance, t, x_t)

    def p_mean_variance(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                        variance: str = "fixed_small", clip_x0: bool = False):
        """p(x_{t−1} | x_t) from an ε-prediction: (mean, variance, log-variance).

        The mean is the posterior mean at x̂0(x_t, ε) (DDPM Eq. 11); ``variance`` is "fixed_small" (β̃_t)
        or "fixed_large" (β_t, with β̃_1 at t = 0 as in Improved-DDPM); ``clip_x0`` clips x̂0 to [-1, 1].
        """
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {list(VARIANCES)}")
        x0 = self.predict_x0(x_t, t, eps)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        mean, var, log_var = self.posterior_mean_variance(x0, x_t, t)
        if variance == "fixed_large":
            large = torch.cat([self.posterior_variance[1:2], self.betas[1:]]) if self.num_timesteps > 1 else self.betas
            var, log_var = self._at(large, t, x_t), self._at(large.log(), t, x_t)
        return mean, var, log_var

    def vb_terms(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps_pred: torch.Tensor,
                 variance: str = "fixed_small", num_bins: int = 256, clip_x0: bool = False) -> torch.Tensor:
        """The variational-bound term L_t of each sample, in bits per dimension, shape (batch,).

        Improved-DDPM's ``_vb_terms_bpd``: for t >= 1, L_t = KL(q(x_{t−1} | x_t, x0) ‖ p(x_{t−1} | x_t)),
        the Gaussian KL averaged over dimensions; for t = 0, L_0 = −log p(x0 | x_1) under the
        discretised Gaussian decoder over ``num_bins`` values in [-1, 1] (256 for 8-bit images, 17 for
        digits). ``x_t`` must be ``add_noise(x0, noise, t)`` and ``eps_pred`` the network's ε at (t, x_t).
        Seed 004 rewards the sampler with differences of these L_t before and after an update.
        """
        if not isinstance(num_bins, int) or num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2 (values the data takes), got {num_bins!r}")
        t = self.check_timesteps(t, x0.shape[0])
        true_mean, _, true_log_var = self.posterior_mean_variance(x0, x_t, t)
        mean, _, log_var = self.p_mean_variance(x_t, t, eps_pred, variance, clip_x0)
        kl = mean_over_data_dims(normal_kl(true_mean, true_log_var, mean, log_var)) / LN2
        decoder_nll = -mean_over_data_dims(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var, num_bins)) / LN2
        return torch.where(t.to(kl.device) == 0, decoder_nll, kl)

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x0) ‖ N(0, I)) of each sample, in bits per dimension, shape (batch,)."""
        last = torch.full((x0.shape[0],), self.num_timesteps - 1, dtype=torch.long)
        mean = self._at(self.alphas_cumprod.sqrt(), last, x0) * x0
        log_var = self._at((1 - self.alphas_cumprod).log(), last, x0).expand_as(x0)
        return mean_over_data_dims(normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0))) / LN2
