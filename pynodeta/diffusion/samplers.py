"""The image samplers, one contract and one registry (k-diffusion's).

Every sampler is ``sampler(denoiser, x, sigmas, *, extra_args=None, generator=None, callback=None,
disable=None, **options) -> x0``:

- ``denoiser(x, sigma, **extra_args) -> x̂0`` takes ``x`` of any shape (batch, ...) and ``sigma`` of shape
  (batch,); ``extra_args`` (e.g. ``{"class_labels": labels}``) reach it on every call, and without them
  it is called with two arguments only;
- ``x`` holds noise at ``sigmas[0]`` (e.g. ``randn * sigmas[0]``); ``sigmas`` decrease, usually to 0
  (``karras_sigmas``, or ``ddpm_sigmas`` for a DDPM schedule);
- ``generator`` (a torch.Generator or None; anything else, a seed say, is refused before the first
  evaluation) drives all fresh noise; deterministic samplers draw nothing from it;
- ``callback`` gets k-diffusion's dict {x, i, sigma, sigma_hat, denoised} after each step's first
  evaluation, with ``x`` the state at ``sigma_hat`` that ``denoised`` was computed from;
- ``disable``: the progress bar over the steps on stderr; None shows it only when stderr is a terminal.

Samplers run under ``torch.no_grad()`` (k-diffusion's do too): the graph of every denoiser call would
otherwise be kept to the end; a denoiser that needs a gradient inside (classifier guidance) enables it there.

Each call publishes a ``SolveStats`` (method = the sampler's name, backend = "sampler", nfe, n_steps,
t_evaluated = the σ the denoiser saw), so ``with pynodeta.record_stats() as log: ...`` reports the NFE
of samplers and ODE solves alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .ancestral_samplers import sample_dpm_2_ancestral, sample_dpmpp_2s_ancestral, sample_euler_ancestral
from .ddpm_noise_levels import sample_ddim_noise_levels, sample_ddpm_noise_levels
from .dpm_adaptive import sample_dpm_adaptive
from .ode_samplers import sample_dpm_2, sample_dpmpp_2m, sample_euler, sample_heun, sample_lms
from .sde_samplers import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_dpmpp_sde

__all__ = ["SAMPLERS", "get_sampler"]

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpm_adaptive": sample_dpm_adaptive,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "ddim": sample_ddim_noise_levels,
    "ddpm": sample_ddpm_noise_levels,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler called ``name``, one of ``SAMPLERS`` (k-diffusion's names, plus "ddim" and "ddpm")."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {list(SAMPLERS)} "
                         "(sample_ddpm / sample_ddim take an ε-network directly)")
    return SAMPLERS[name]
