"""``DDPMObjective``: a discrete DDPM schedule, ε-, x0- or v-prediction (Ho et al. 2020; Salimans & Ho 2022),
a timestep sampler (uniform, importance, SpeeD or the learned one of Kim et al. 2024) and a loss weighting."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pynodeta.diffusion import DDPMSchedule, DenoiserFromEpsilon
from pynodeta.diffusion.learned_timestep_sampler import LearnedTimestepSampler
from pynodeta.diffusion.loss_weighting import make_loss_weighting
from pynodeta.diffusion.timestep_samplers import make_timestep_sampler

from ..adaptive_timesteps import TimestepSamplerTraining, ddpm_vb_terms
from ..diffusion_objectives import PREDICTIONS, EpsilonView, Prediction, prediction_target
from .base import DiffusionObjective

__all__ = ["DDPMObjective"]


class DDPMObjective(DiffusionObjective):
    """Noise x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε at a timestep t drawn by ``timestep_sampler`` and regress the
    network's prediction on its target, weighted by ``loss_weighting``(SNR_t).

    The network is ``model(t, x_t[, class_labels])`` with integer timesteps t in [0, T). Sampled by default
    with DDIM, 50 steps.
    """

    default_sampler = "ddim"
    default_steps = 50

    def __init__(
        self,
        schedule: DDPMSchedule | None = None,          # default DDPMSchedule(): T = 1000, linear β
        prediction: Prediction = "epsilon",            # what the network predicts: epsilon | sample | v
        timestep_sampler: str = "uniform",             # uniform | importance | speed | adaptive
        timestep_sampler_options: dict | None = None,
        loss_weighting: str = "none",                  # none | p2 | min-snr
        loss_weighting_options: dict | None = None,
        num_bins: int = 256,                           # pixel values, for the learned sampler's bound terms
    ):
        super().__init__()
        if schedule is not None and not isinstance(schedule, DDPMSchedule):
            raise TypeError(f"schedule must be a pynodeta.diffusion.DDPMSchedule, got {type(schedule).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2 pixel values, got {num_bins}")
        self.schedule = schedule if schedule is not None else DDPMSchedule()
        self.prediction = prediction
        self.timestep_sampler_name = timestep_sampler
        self.timestep_sampler_options = dict(timestep_sampler_options or {})
        self.num_bins = num_bins
        self.loss_weighting = make_loss_weighting(loss_weighting, **(loss_weighting_options or {}))
        self.timestep_sampler, self.sampler_training = None, None  # built by attach(): they need the network

    def attach(self, model: nn.Module, sample_shape: Sequence[int]) -> None:
        self.timestep_sampler = make_timestep_sampler(
            self.timestep_sampler_name, self.schedule.num_timesteps, alphas_cumprod=self.schedule.alphas_cumprod,
            in_channels=sample_shape[0], **self.timestep_sampler_options)
        # what training owes the sampler: loss-aware updates, the learned sampler's update around the optimiser
        # step (the only one that needs the variational-bound terms)
        learned = isinstance(self.timestep_sampler, LearnedTimestepSampler)
        bound_terms = ddpm_vb_terms(self.eps_model(model), self.schedule, self.num_bins) if learned else None
        self.sampler_training = TimestepSamplerTraining(self.timestep_sampler, bound_terms)

    def eps_model(self, model: nn.Module) -> nn.Module:
        """The network as an ε-network ``eps_model(t, x_t, class_labels=None)`` whatever it predicts."""
        return EpsilonView(model, self.schedule, self.prediction)

    def denoiser(self, model: nn.Module) -> nn.Module:
        return DenoiserFromEpsilon(self.eps_model(model), self.schedule, timestep="interpolate")

    def sampling_sigmas(self, model: nn.Module, sampler: str, steps: int, **grid) -> torch.Tensor:
        if sampler in ("ddpm", "ddim"):
            from pynodeta.diffusion import ddpm_sigmas

            if grid:
                raise ValueError(f"sampler {sampler!r} walks the schedule's timesteps and takes no grid options, "
                                 f"got {sorted(grid)}")
            # the schedule's own timesteps (all T for ancestral DDPM), in float64 as the ε-samplers compute them
            return ddpm_sigmas(self.schedule, None if sampler == "ddpm" else steps)
        return super().sampling_sigmas(model, sampler, steps, **grid)

    def prior_scale(self, sampler: str, sigmas: torch.Tensor) -> torch.Tensor:
        # DDPM starts from x_T ~ N(0, I), the variance-preserving state; as the variance-exploding state
        # x = x_T/√ᾱ_T that is √(1 + σ_T²), not σ_T (a 2e-5 relative difference at σ_T = 157, kept exact)
        if sampler in ("ddpm", "ddim"):
            return (1 + sigmas[0] ** 2).sqrt()
        return super().prior_scale(sampler, sigmas)

    def check_sampler(self, sampler: str) -> None:
        """Every image sampler can drive a DDPM model."""

    def loss(self, model: nn.Module, x0: torch.Tensor, class_labels: torch.Tensor | None = None, *,
             generator: torch.Generator | None = None, step: int | None = None) -> torch.Tensor:
        if self.timestep_sampler is None:
            raise RuntimeError("DDPMObjective.attach(model, sample_shape) must run before loss(); DiffusionModule "
                               "does this when it is built")
        t, sampler_weights = self.timestep_sampler.sample(x0.shape[0], x0.device, generator, x0=x0)
        noise = torch.randn(x0.shape, generator=generator).to(x0) if generator else torch.randn_like(x0)
        x_t = self.schedule.add_noise(x0, noise, t)
        target = prediction_target(self.prediction, self.schedule, x0, noise, t)
        output = model(t, x_t) if class_labels is None else model(t, x_t, class_labels=class_labels)
        # the loss in the data's dtype (float32) whatever precision the network ran in under autocast, as
        # NVlabs/edm2 casts the network output to float32 before its loss (networks_edm2.py Precond.forward)
        per_sample = F.mse_loss(output.to(target.dtype), target, reduction="none").flatten(1).mean(dim=1)
        if step is not None:  # training: loss-aware samplers learn from the unweighted losses
            self.sampler_training.after_loss(step, x0, t, per_sample)
        weights = self.loss_weighting(self.schedule.snr(t)).to(torch.float32)
        return per_sample * sampler_weights * weights

    def after_optimizer_step(self) -> dict[str, float] | None:
        return self.sampler_training.after_optimizer_step() if self.sampler_training is not None else None

    def training_state(self) -> dict | None:
        return self.sampler_training.state_dict() if self.sampler_training is not None else None

    def load_training_state(self, state: dict) -> None:
        self.sampler_training.load_state_dict(state)

    def extra_repr(self) -> str:
        return (f"T={self.schedule.num_timesteps}, beta_schedule={self.schedule.beta_schedule!r}, "
                f"prediction={self.prediction!r}, timestep_sampler={self.timestep_sampler_name!r}")
