"""The diffusion stack: noise schedules, samplers, the probability-flow ODE (through ``pynodeta.solve``)
and likelihoods.

Conventions: a *denoiser* is ``denoiser(x, sigma, class_labels=None) -> x̂0`` with ``sigma`` of shape
(batch,) (EDM, k-diffusion); an *ε-network* is time-first, ``eps_model(t, x) -> ε̂`` with integer ``t`` of
shape (batch,) in [0, T). Every image sampler in ``SAMPLERS`` has k-diffusion's signature
``sampler(denoiser, x, sigmas, *, extra_args=None, generator=None, callback=None, disable=None, **options)``.
Samplers and solves publish their NFE; read it with ``pynodeta.record_stats()``. Latent diffusion
(``pynodeta.diffusion.latents``): a user's diffusers ``AutoencoderKL`` in EDM2's convention, ``LatentEncoder``.
"""

from ..ode.stats import SolveStats, record_stats
from ._checks import NonFiniteDenoiserError
from .ancestral_samplers import sample_dpm_2_ancestral, sample_dpmpp_2s_ancestral, sample_euler_ancestral
from .brownian import BrownianNoise
from .ddpm_noise_levels import ddpm_sigmas, sample_ddim_noise_levels, sample_ddpm_noise_levels
from .ddpm_samplers import TIMESTEP_SPACINGS, ddim_timesteps, sample_ddim, sample_ddpm
from .denoisers import DenoiserFromEpsilon
from .dpm_adaptive import sample_dpm_adaptive
from .edm2 import EDM2Precond, edm2_learning_rate, edm2_loss
from .external import external_denoiser
from .guidance import GuidedDenoiser
from .latents import EDM2_SD_VAE_SCALING, LatentEncoder, LatentScaling, draw_latents
from .learned_timestep_sampler import LearnedTimestepSampler
from .likelihood import bits_per_dim, dequantize, log_likelihood
from .loss_weighting import LOSS_WEIGHTINGS, make_loss_weighting, min_snr_weight, p2_weight
from .ode_samplers import sample_dpm_2, sample_dpmpp_2m, sample_euler, sample_heun, sample_lms
from .precision import SAMPLING_PRECISIONS, AutocastDenoiser, autocast_dtype
from .preconditioning import EDMPrecond, edm_loss, edm_loss_weight
from .probability_flow import probability_flow
from .released_edm2 import load_released_edm2
from .sampler_options import check_sampler_options, sampler_option_names
from .samplers import SAMPLERS, get_sampler
from .schedules import BETA_SCHEDULES, DDPMSchedule, karras_sigmas
from .sde_samplers import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_dpmpp_sde
from .timestep_samplers import (
    TIMESTEP_SAMPLERS,
    LossSecondMomentSampler,
    SpeeDSampler,
    UniformSampler,
    make_timestep_sampler,
)
from .variational_bound import variational_bound

__all__ = [
    "karras_sigmas",
    "DDPMSchedule",
    "BETA_SCHEDULES",
    "sample_euler",
    "sample_heun",
    "sample_dpmpp_2m",
    "sample_euler_ancestral",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_lms",
    "sample_dpm_adaptive",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_sde",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
    "sample_ddim_noise_levels",
    "sample_ddpm_noise_levels",
    "BrownianNoise",
    "SAMPLERS",
    "get_sampler",
    "sampler_option_names",
    "check_sampler_options",
    "sample_ddpm",
    "sample_ddim",
    "ddim_timesteps",
    "ddpm_sigmas",
    "TIMESTEP_SPACINGS",
    "DenoiserFromEpsilon",
    "external_denoiser",
    "load_released_edm2",
    "GuidedDenoiser",
    "AutocastDenoiser",
    "autocast_dtype",
    "SAMPLING_PRECISIONS",
    "LatentEncoder",
    "LatentScaling",
    "EDM2_SD_VAE_SCALING",
    "draw_latents",
    "EDMPrecond",
    "EDM2Precond",
    "edm2_loss",
    "edm2_learning_rate",
    "edm_loss",
    "edm_loss_weight",
    "probability_flow",
    "log_likelihood",
    "bits_per_dim",
    "variational_bound",
    "dequantize",
    "UniformSampler",
    "LossSecondMomentSampler",
    "SpeeDSampler",
    "LearnedTimestepSampler",
    "make_timestep_sampler",
    "TIMESTEP_SAMPLERS",
    "min_snr_weight",
    "p2_weight",
    "make_loss_weighting",
    "LOSS_WEIGHTINGS",
    "NonFiniteDenoiserError",
    "SolveStats",
    "record_stats",
]
