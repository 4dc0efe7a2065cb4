"""Discrete-time samplers for ε-prediction networks: ``sampler(eps_model, x_T, schedule, ...) -> x0``.

``eps_model(t, x) -> ε̂`` is time-first (pynodeta's convention), ``t`` an int64 tensor of shape (batch,)
in [0, T). Each call publishes a ``SolveStats`` (backend = "sampler", nfe, t_evaluated = the timesteps),
readable with ``pynodeta.record_stats()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._random import randn
from ..ode.stats import SolveStats, _publish
from ._checks import NonFiniteDenoiserError, all_finite, check_option
from .schedules import DDPMSchedule

__all__ = ["sample_ddpm", "sample_ddim", "ddim_timesteps"]

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _CountingEpsModel:
    """Wraps an ε-network: counts evaluations into a SolveStats and checks every output."""

    def __init__(self, eps_model: EpsModel, method: str, n_steps: int):
        self.eps_model = eps_model
        self.stats = SolveStats(method=method, backend="sampler", n_steps=n_steps, n_accepted=n_steps)
        _publish(self.stats)

    def __call__(self, t: int, x: torch.Tensor) -> torch.Tensor:
        self.stats.nfe += 1
        self.stats.t_evaluated.append(float(t))
        eps = self.eps_model(torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), x)
        if eps.shape != x.shape:
            raise ValueError(f"eps_model must return x's shape {tuple(x.shape)}, got {tuple(eps.shape)}")
        if not all_finite(eps):
            raise NonFiniteDenoiserError(f"eps_model returned NaN/Inf at timestep t={t}: check the network "
                                         "and its input scaling there")
        return eps


def _check_start(x_T: torch.Tensor, schedule: DDPMSchedule) -> None:
    if not isinstance(schedule, DDPMSchedule):
        raise TypeError(f"schedule must be a DDPMSchedule, got {type(schedule).__name__}")
    if not torch.isfinite(x_T).all():
        raise ValueError("x_T contains NaN/Inf; pass standard normal noise, torch.randn(shape)")


def sample_ddpm(eps_model: EpsModel, x_T: torch.Tensor, schedule: DDPMSchedule,
                generator: torch.Generator | None = None, *, variance: str = "fixed_small",
                clip_x0: bool = False) -> torch.Tensor:
    """Ancestral sampling, DDPM Algorithm 2 (variance β̃_t "fixed_small" or β_t "fixed_large"), T evaluations."""
    _check_start(x_T, schedule)
    model = _CountingEpsModel(eps_model, "ddpm", schedule.num_timesteps)
    x = x_T
    for t in reversed(range(schedule.num_timesteps)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long)
        mean, _, log_var = schedule.p_mean_variance(x, t_batch, model(t, x), variance, clip_x0)
        if t == 0:  # the last step returns the mean (DDPM Algorithm 2, z = 0 at t = 1)
            return mean
        noise = randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = mean + torch.exp(0.5 * log_var) * noise
    raise AssertionError("unreachable: the loop returns at t = 0")


def ddim_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """``num_steps`` evenly spaced timesteps from T − 1 down to 0 (both ends included)."""
    if not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be an integer in [1, T = {num_timesteps}], got {num_steps!r}")
    if num_steps == 1:
        return [num_timesteps - 1]
    grid = torch.linspace(num_timesteps - 1, 0, num_steps, dtype=torch.float64).round().long()
    return [int(t) for t in grid]


def sample_ddim(eps_model: EpsModel, x_T: torch.Tensor, schedule: DDPMSchedule, num_steps: int = 50,
                eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDIM, Song et al. 2021 Eq. 12 (η = 0: deterministic; η = 1: DDPM-like), ``num_steps`` evaluations."""
    _check_start(x_T, schedule)
    eta = check_option("eta", eta, "0: deterministic DDIM, 1: DDPM-like")
    timesteps = ddim_timesteps(schedule.num_timesteps, num_steps)
    model = _CountingEpsModel(eps_model, "ddim", len(timesteps))
    alphas_cumprod = schedule.alphas_cumprod.tolist()
    x = x_T
    for i, t in enumerate(timesteps):
        eps = model(t, x)
        alpha, alpha_next = alphas_cumprod[t], (alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0)
        x0 = (x - (1 - alpha) ** 0.5 * eps) / alpha**0.5
        # σ_t(η) of Eq. 16; the remaining noise variance goes to the deterministic direction ε̂
        sigma = eta * ((1 - alpha_next) / (1 - alpha) * (1 - alpha / alpha_next)) ** 0.5
        x = alpha_next**0.5 * x0 + max(1 - alpha_next - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x
