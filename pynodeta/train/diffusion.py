"""``DiffusionModule``: a TrainingModule training a ``forward(t, x)`` network as a diffusion model.

Objectives: "ddpm" (discrete DDPM schedule; ε-, x0- or v-prediction, Ho et al. 2020) and "edm"
(EDM preconditioning and loss, Karras et al. 2022). The timestep sampler and the loss weighting
are options with one call site each (``_draw_timesteps``, ``_loss_weights``). The EMA of the
weights is updated after every optimiser step and used for every sample, FD and likelihood.
Validation logs the loss and, every ``eval_every_n_epochs``, samples a grid (PNG), the Fréchet
distance beside its real-data floor and the sampler's NFE; ``fit`` ends with one summary line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import pynodeta.diffusion as pd
from pynodeta.diffusion.loss_weighting import make_loss_weighting
from pynodeta.diffusion.timestep_samplers import make_timestep_sampler
from pynodeta.ema import EMA
from pynodeta.ema.average import RAW_WEIGHTS

from .adaptive_timesteps import TimestepSamplerTraining, ddpm_vb_terms
from .base import TrainingModule
from .diffusion_objectives import PREDICTIONS, EpsilonView, Prediction, prediction_target
from .diffusion_optim import DiffusionAdam
from .diffusion_sampling import SAMPLER_NAMES, generate
from .optim import OptimizerPreset
from .weight_averages import store_average, stored_average_state

__all__ = ["DiffusionModule"]


class DiffusionModule(TrainingModule):
    """Trains ``model`` (forward(t, x) -> tensor of x's shape) as a DDPM or EDM diffusion model.

    Batches are ``x`` or ``(x, labels)`` with x (batch, C, H, W) in the data scale the model
    generates (``normalization="diffusion"``: [-1, 1]); labels are ignored.
    """

    def __init__(
        self,
        model: nn.Module,                             # the network, forward(t, x)
        objective: Literal["ddpm", "edm"] = "ddpm",
        prediction: Prediction = "epsilon",           # ddpm: what the network predicts (epsilon | sample | v)
        num_timesteps: int = 1000,                    # ddpm: T
        beta_schedule: str = "linear",                # ddpm: linear | quad | cosine
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        timestep_sampler: str = "uniform",            # ddpm: see pynodeta.diffusion.timestep_samplers
        timestep_sampler_options: dict | None = None,
        loss_weighting: str = "none",                 # ddpm: none | p2 | min-snr
        loss_weighting_options: dict | None = None,
        sigma_data: float = 0.5,                      # edm: σ_data of the preconditioning
        p_mean: float = -1.2,                         # edm: ln σ ~ N(p_mean, p_std²) in training
        p_std: float = 1.2,
        sample_shape: Sequence[int] | None = None,    # (C, H, W); default from model.in_channels/image_size
        optim: OptimizerPreset | None = None,         # default DiffusionAdam()
        ema_decay: float | None = 0.999,              # classic EMA of the weights; None: no EMA
        sampler: str = "heun",                        # sampler of validation and the summary
        sampler_steps: int = 18,                      # its noise levels (heun: 2·steps − 1 NFE)
        eval_every_n_epochs: int = 1,                 # sample grid + FD every n validation epochs (0: only at the end)
        eval_num_samples: int = 512,                  # images drawn for the FD
        nll_num_images: int = 64,                     # test images of the bits/dim estimate at the end
        num_bins: int = 256,                          # values a pixel takes (bits/dim's dequantisation; digits: 17)
        inception_weights: str | None = None,         # FD features for images other than 8×8 digits
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module with forward(t, x), got {type(model).__name__}")
        super().__init__(optim)
        _check_options(objective, prediction, sampler, sampler_steps, ema_decay, eval_every_n_epochs,
                       eval_num_samples, nll_num_images, num_bins, sigma_data, p_std)
        self.model = model
        self.objective, self.prediction = objective, prediction
        self.sample_shape = _sample_shape(model, sample_shape)
        self.sampler, self.sampler_steps = sampler, sampler_steps
        self.eval_every_n_epochs, self.eval_num_samples = eval_every_n_epochs, eval_num_samples
        self.nll_num_images, self.num_bins = nll_num_images, num_bins
        self.inception_weights = inception_weights
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std
        self.schedule = pd.DDPMSchedule(num_timesteps, beta_schedule, beta_start, beta_end)
        self.timestep_sampler = make_timestep_sampler(
            timestep_sampler, num_timesteps, alphas_cumprod=self.schedule.alphas_cumprod,
            in_channels=self.sample_shape[0], **(timestep_sampler_options or {}))
        # what training owes the sampler: loss-aware updates, seed 004's update around the optimiser step
        bound_terms = ddpm_vb_terms(self.eps_model(), self.schedule, num_bins) if objective == "ddpm" else None
        self.sampler_training = TimestepSamplerTraining(self.timestep_sampler, bound_terms)
        self.loss_weighting = make_loss_weighting(loss_weighting, **(loss_weighting_options or {}))
        self.ema = EMA(model, ema_decay) if ema_decay is not None else None
        self.last_evaluation: dict = {}

    # --- the model as a denoiser -------------------------------------------------------------------
    def eps_model(self) -> nn.Module:
        """The network as an ε-network ``eps_model(t, x_t)`` (DDPM objective only)."""
        if self.objective != "ddpm":
            raise ValueError("eps_model() needs objective 'ddpm'; an EDM model is used through denoiser()")
        return EpsilonView(self.model, self.schedule, self.prediction)

    def denoiser(self) -> nn.Module:
        """``denoiser(x, sigma) -> x̂0`` for the noise-level samplers, the ODE and the likelihood."""
        if self.objective == "ddpm":
            return pd.DenoiserFromEpsilon(self.eps_model(), self.schedule, timestep="interpolate")
        from pynodeta.diffusion.preconditioning import EDMPrecond

        return EDMPrecond(self.model, sigma_data=self.sigma_data)

    def sigma_range(self) -> tuple[float, float]:
        """(sigma_min, sigma_max) of sampling: the DDPM schedule's range, EDM's 0.002 and 80."""
        if self.objective == "ddpm":
            sigmas = self.schedule.sigmas
            return float(sigmas[0]), float(sigmas[-1])
        return 0.002, 80.0

    # --- training ------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(_images(batch, self.sample_shape))
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=_batch_size(batch))
        return loss

    def _loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.objective == "edm":
            return self._edm_loss(x0, generator)
        t, sampler_weights = self._draw_timesteps(x0, generator)
        noise = torch.randn(x0.shape, generator=generator).to(x0) if generator else torch.randn_like(x0)
        x_t = self.schedule.add_noise(x0, noise, t)
        target = prediction_target(self.prediction, self.schedule, x0, noise, t)
        per_sample = F.mse_loss(self.model(t, x_t), target, reduction="none").flatten(1).mean(dim=1)
        if self.training:  # validation batches teach the sampler nothing
            self.sampler_training.after_loss(self.global_step, x0, t, per_sample)
        return (per_sample * sampler_weights * self._loss_weights(t)).mean()

    def _draw_timesteps(self, x0: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The one call site of the timestep sampler: (t, importance weights), each (batch,)."""
        return self.timestep_sampler.sample(x0.shape[0], x0.device, generator, x0=x0)

    def _loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """The one call site of the loss weighting: w(SNR_t), (batch,) in float32."""
        return self.loss_weighting(self.schedule.snr(t)).to(torch.float32)

    def _edm_loss(self, x0: torch.Tensor, generator) -> torch.Tensor:
        # EDM Eq. 8 with ln σ ~ N(P_mean, P_std²) and λ(σ) = (σ² + σ_d²)/(σ σ_d)² (Table 1)
        from pynodeta.diffusion.preconditioning import edm_loss

        return edm_loss(self.denoiser(), x0, p_mean=self.p_mean, p_std=self.p_std, sigma_data=self.sigma_data,
                        generator=generator).mean()

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, not in on_train_batch_end: Lightning runs callbacks' batch-end hooks before the
        # module's, and a checkpoint a callback writes at this step must hold this step's EMA.
        # Once per optimiser step, also under gradient accumulation.
        if self.ema is not None:
            self.ema.update(self.global_step)  # a classic EMA's decay is per update; the count is not used

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        sampler_logs = self.sampler_training.after_optimizer_step()  # the adaptive sampler, every f_S steps
        if sampler_logs:
            self.log_dict(sampler_logs, on_step=True, on_epoch=False)

    def default_optim(self) -> OptimizerPreset:
        return DiffusionAdam()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # the network's gradients only: an adaptive timestep sampler's policy has its own optimiser
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.optim.clip(self.model)

    # --- validation, evaluation ---------------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        # the same noise and timesteps every epoch, so that epochs are compared on one estimate
        generator = torch.Generator().manual_seed(1000 + batch_idx)
        with self.ema_weights():
            loss = self._loss(_images(batch, self.sample_shape), generator)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=_batch_size(batch), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        epoch = self.current_epoch + 1
        if self.trainer.sanity_checking or not self.eval_every_n_epochs or epoch % self.eval_every_n_epochs:
            return
        from .diffusion_evaluation import evaluate_samples

        with self.ema_weights():
            result = evaluate_samples(self, self._output_dir() / f"samples_epoch{epoch:03d}.png")
        for name in ("fd", "fd_floor", "fd_ratio", "sampler_nfe"):
            self.log(f"val/{name}", result[name], sync_dist=True)
        self.last_evaluation = result

    def on_fit_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        from .diffusion_evaluation import final_summary

        with self.ema_weights():
            final_summary(self, self._output_dir())

    @property
    def evaluation_average(self) -> str:
        """The weight average that validation, samples and the summary use: ``"ema"`` or ``"none"``
        (``pynodeta sample``/``evaluate`` default to it)."""
        return "ema" if self.ema is not None else RAW_WEIGHTS

    @contextlib.contextmanager
    def ema_weights(self):
        """Within the block the network holds the EMA weights (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        self.ema.to(self.device)
        self.ema.store(self.model)
        self.ema.copy_to(self.model)
        try:
            yield
        finally:
            self.ema.restore(self.model)

    def draw(self, num: int, sampler: str | None = None, steps: int | None = None, **options):
        """``generate`` with the module's sampler settings as defaults (current weights)."""
        return generate(self, num, self.sampler if sampler is None else sampler,
                        self.sampler_steps if steps is None else steps, **options)

    def _output_dir(self) -> Path:
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        return Path(log_dir or ".")

    # --- exact resume ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # the RNG states
        checkpoint["pynodeta_timestep_sampler"] = self.sampler_training.state_dict()
        if self.ema is not None:
            store_average(checkpoint, "ema", self.ema)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "pynodeta_timestep_sampler" in checkpoint:
            self.sampler_training.load_state_dict(checkpoint["pynodeta_timestep_sampler"])
        state = stored_average_state(checkpoint, "ema") if self.ema is not None else None
        if state is not None:
            self.ema.load_state_dict(state)


def _check_options(objective, prediction, sampler, sampler_steps, ema_decay, eval_every_n_epochs,
                   eval_num_samples, nll_num_images, num_bins, sigma_data, p_std) -> None:
    if objective not in ("ddpm", "edm"):
        raise ValueError(f"objective must be 'ddpm' or 'edm', got {objective!r}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if objective == "edm" and prediction != "epsilon":
        raise ValueError(f"prediction={prediction!r} applies to objective 'ddpm'; EDM's network output is set "
                         "by its preconditioning: leave prediction at 'epsilon'")
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLER_NAMES)}, got {sampler!r}")
    if sampler in ("ddim", "ddpm") and objective != "ddpm":
        raise ValueError(f"sampler {sampler!r} needs objective 'ddpm'; use heun, euler, dpmpp_2m or ode")
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise ValueError(f"ema_decay must be in (0, 1) or None (no EMA), got {ema_decay}")
    for name, value, low in [("sampler_steps", sampler_steps, 1), ("eval_every_n_epochs", eval_every_n_epochs, 0),
                             ("eval_num_samples", eval_num_samples, 2), ("nll_num_images", nll_num_images, 0),
                             ("num_bins", num_bins, 2)]:
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if not (sigma_data > 0 and p_std > 0):
        raise ValueError(f"sigma_data and p_std must be > 0, got {sigma_data} and {p_std}")


def _sample_shape(model: nn.Module, sample_shape) -> tuple[int, ...]:
    if sample_shape is not None:
        if len(sample_shape) != 3 or any(n < 1 for n in sample_shape):
            raise ValueError(f"sample_shape must be (channels, height, width), got {list(sample_shape)}")
        return tuple(int(n) for n in sample_shape)
    channels, size = getattr(model, "in_channels", None), getattr(model, "image_size", None)
    if channels is None or size is None:
        raise ValueError(f"{type(model).__name__} has no in_channels/image_size attributes: pass "
                         "sample_shape=(channels, height, width)")
    return (int(channels), int(size), int(size))


def _images(batch, sample_shape: tuple[int, ...]) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if x.dim() != 4 or tuple(x.shape[1:]) != sample_shape:
        raise ValueError(f"batches must hold images (batch, {', '.join(map(str, sample_shape))}), "
                         f"got {tuple(x.shape)}")
    return x


def _batch_size(batch) -> int:
    return (batch[0] if isinstance(batch, (tuple, list)) else batch).shape[0]
