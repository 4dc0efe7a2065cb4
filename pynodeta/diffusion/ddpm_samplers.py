"""Discrete-time samplers for ε-prediction networks: ``sampler(eps_model, x_T, schedule, ...) -> x0``.

``eps_model(t, x) -> ε̂`` is time-first (pynodeta's convention), ``t`` an int64 tensor of shape (batch,)
in [0, T); with ``extra_args`` it is called ``eps_model(t, x, **extra_args)``. ``x_T`` is standard normal
noise (the VP view). Each call publishes a ``SolveStats`` (backend = "sampler", nfe, t_evaluated = the
timesteps), readable with ``pynodeta.record_stats()``. The same two samplers in k-diffusion's contract,
over ``DenoiserFromEpsilon`` and ``ddpm_sigmas``, are ``SAMPLERS["ddpm"]`` and ``SAMPLERS["ddim"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from .._random import check_generator, randn
from ..ode.stats import SolveStats, _publish
from ._checks import check_extra_args, check_option
from ._output_checks import OutputChecks
from ._progress import progress_range
from .schedules import DDPMSchedule

__all__ = ["sample_ddpm", "sample_ddim", "ddim_timesteps", "TIMESTEP_SPACINGS"]

EpsModel = Callable[..., torch.Tensor]

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


class _CountingEpsModel:
    """Wraps an ε-network: forwards ``extra_args``, counts evaluations into a SolveStats, checks every output
    (NaN/Inf through ``OutputChecks``, so a sampler ends with ``return model.finish(x)``)."""

    def __init__(self, eps_model: EpsModel, method: str, n_steps: int, extra_args: Mapping | None = None):
        self.eps_model, self.extra_args = eps_model, check_extra_args(extra_args)
        self.stats = SolveStats(method=method, backend="sampler", n_steps=n_steps, n_accepted=n_steps)
        self.outputs = OutputChecks(_nonfinite_eps_message)
        _publish(self.stats)

    def __call__(self, t: int, x: torch.Tensor) -> torch.Tensor:
        self.stats.nfe += 1
        self.stats.t_evaluated.append(float(t))
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = self.eps_model(t_batch, x, **self.extra_args) if self.extra_args else self.eps_model(t_batch, x)
        if eps.shape != x.shape:
            raise ValueError(f"eps_model must return x's shape {tuple(x.shape)}, got {tuple(eps.shape)}")
        self.outputs.check(eps, t)
        return eps

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The sampler's result ``x``, once every output of the run has been checked."""
        self.outputs.raise_if_any()
        return x


def _nonfinite_eps_message(t: int) -> str:
    return f"eps_model returned NaN/Inf at timestep t={t}: check the network and its input scaling there"


def _check_start(x_T: torch.Tensor, schedule: DDPMSchedule, generator: torch.Generator | None) -> None:
    check_generator(generator)
    if not isinstance(schedule, DDPMSchedule):
        raise TypeError(f"schedule must be a DDPMSchedule, got {type(schedule).__name__}")
    if not torch.isfinite(x_T).all():
        raise ValueError("x_T contains NaN/Inf; pass standard normal noise, torch.randn(shape)")


@torch.no_grad()
def sample_ddpm(eps_model: EpsModel, x_T: torch.Tensor, schedule: DDPMSchedule,
                generator: torch.Generator | None = None, *, variance: str = "fixed_small",
                clip_x0: bool = False, extra_args: Mapping | None = None,
                disable: bool | None = None) -> torch.Tensor:
    """Ancestral sampling, DDPM Algorithm 2 (variance β̃_t "fixed_small" or β_t "fixed_large"), T evaluations;
    ``clip_x0`` clips x̂0 to [-1, 1] before the posterior mean (diffusers' ``clip_sample``)."""
    _check_start(x_T, schedule, generator)
    model = _CountingEpsModel(eps_model, "ddpm", schedule.num_timesteps, extra_args)
    x = x_T
    for step in progress_range(schedule.num_timesteps, disable, "ddpm"):
        t = schedule.num_timesteps - 1 - step
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long)
        mean, _, log_var = schedule.p_mean_variance(x, t_batch, model(t, x), variance, clip_x0)
        if t == 0:  # the last step returns the mean (DDPM Algorithm 2, z = 0 at t = 1)
            x = mean
        else:
            noise = randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = mean + torch.exp(0.5 * log_var) * noise
    return model.finish(x)


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str = "linspace", steps_offset: int = 0) -> list[int]:
    """``num_steps`` decreasing timesteps in [0, T), by diffusers' ``DDIMScheduler.set_timesteps`` rules.

    - "linspace": round(k(T − 1)/(n − 1)) for k = n − 1 … 0, from T − 1 down to 0 (the default, and
      pynodeta's only spacing before: it differed from diffusers' only where k(T − 1)/(n − 1) is a
      half-integer, e.g. T = 1000 with n = 103, which torch's linspace rounded the other way);
    - "leading" (diffusers' DDIM default): k·⌊T/n⌋ + steps_offset for k = n − 1 … 0;
    - "trailing": round(T − k·T/n) − 1 for k = 0 … n − 1, from T − 1 down to about T/n − 1.

    ``steps_offset`` (diffusers' config, 0 by default there too; Stable Diffusion uses 1) shifts "leading"
    only, as in diffusers. Deliberate differences: one "linspace" step is [T − 1] (diffusers: [0], a
    single step that would treat pure noise as nearly clean data), and "trailing" keeps n timesteps where
    float rounding makes numpy's arange return an extra one (T = 50, n = 29: diffusers ends on t = −1).
    """
    if not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be an integer in [1, T = {num_timesteps}], got {num_steps!r}")
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; choose one of {list(TIMESTEP_SPACINGS)} "
                         "(diffusers' names)")
    if not isinstance(steps_offset, int) or steps_offset < 0:
        raise ValueError(f"steps_offset must be an integer >= 0, got {steps_offset!r}")
    if steps_offset and spacing != "leading":
        raise ValueError(f"steps_offset shifts 'leading' timesteps only (diffusers' rule), got "
                         f"steps_offset={steps_offset} with timestep_spacing={spacing!r}")
    if spacing == "linspace":
        if num_steps == 1:
            return [num_timesteps - 1]
        grid = np.linspace(0, num_timesteps - 1, num_steps).round()[::-1]
    elif spacing == "leading":
        grid = (np.arange(0, num_steps) * (num_timesteps // num_steps)).round()[::-1] + steps_offset
    else:
        grid = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps))[:num_steps] - 1
    timesteps = [int(t) for t in grid.astype(np.int64)]
    if timesteps[0] >= num_timesteps:
        raise ValueError(f"steps_offset={steps_offset} moves the first timestep to {timesteps[0]}, past T − 1 = "
                         f"{num_timesteps - 1}; use a smaller steps_offset or more steps")
    return timesteps


@torch.no_grad()
def sample_ddim(eps_model: EpsModel, x_T: torch.Tensor, schedule: DDPMSchedule, num_steps: int = 50,
                eta: float = 0.0, generator: torch.Generator | None = None, *, timestep_spacing: str = "linspace",
                steps_offset: int = 0, clip_x0: bool = False, extra_args: Mapping | None = None,
                disable: bool | None = None) -> torch.Tensor:
    """DDIM, Song et al. 2021 Eq. 12 (η = 0: deterministic; η = 1: DDPM-like), ``num_steps`` evaluations.

    Timesteps from :func:`ddim_timesteps` (``timestep_spacing``, ``steps_offset``); each step goes to the
    next timestep of that list and the last to ᾱ = 1 (diffusers' ``set_alpha_to_one``; diffusers steps to
    t − ⌊T/n⌋ instead, which is the next timestep for "leading" and, when n divides T, "trailing", but not
    for "linspace"). ``clip_x0`` clips x̂0 to [-1, 1] and, as diffusers' ``clip_sample`` with
    ``use_clipped_model_output=False``, keeps the network's ε̂ for the direction term.
    """
    _check_start(x_T, schedule, generator)
    eta = check_option("eta", eta, "0: deterministic DDIM, 1: DDPM-like")
    timesteps = ddim_timesteps(schedule.num_timesteps, num_steps, timestep_spacing, steps_offset)
    model = _CountingEpsModel(eps_model, "ddim", len(timesteps), extra_args)
    alphas_cumprod = schedule.alphas_cumprod.tolist()
    x = x_T
    for i in progress_range(len(timesteps), disable, "ddim"):
        t = timesteps[i]
        eps = model(t, x)
        alpha, alpha_next = alphas_cumprod[t], (alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0)
        x0 = (x - (1 - alpha) ** 0.5 * eps) / alpha**0.5
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        # σ_t(η) of Eq. 16; the remaining noise variance goes to the deterministic direction ε̂
        sigma = eta * ((1 - alpha_next) / (1 - alpha) * (1 - alpha / alpha_next)) ** 0.5
        x = alpha_next**0.5 * x0 + max(1 - alpha_next - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return model.finish(x)
