"""``DiffusionModule``: a network trained for a diffusion objective, evaluated with a weight average.

``DiffusionModule(model, objective, averaging=…, evaluation=EvalSettings(…), optim=…)``: the objective
(``DDPMObjective``, ``EDMObjective``, ``EDM2Objective``) owns the loss, the network seen as a denoiser and
the default image sampler; the module owns what every objective shares — batches and class labels, label
dropout, the optimiser, the weight average and evaluation. Validation logs the loss and, every
``evaluation.every_n_epochs``, samples a grid (PNG), the Fréchet distance beside its real-data floor and the
sampler's NFE; ``fit`` ends with one summary line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from pynodeta.diffusion.sampler_options import split_grid_options
from pynodeta.ema import EMA
from pynodeta.ema.average import RAW_WEIGHTS, sigma_rel_key

from .averaging import EMAAveraging, PowerEMAAveraging
from .base import TrainingModule
from .compiled_training import CompiledTraining, check_compile_training
from .conditioning import ClassConditioning
from .diffusion_sampling import generate
from .evaluation_settings import EvalSettings
from .fit_errors import FitSettingError
from .latent_runs import LATENTS_KEY, latent_record_of
from .objectives import DDPMObjective, DiffusionObjective
from .optim import OptimizerPreset
from .weight_averages import store_average, stored_average_state

__all__ = ["DiffusionModule"]

TIMESTEP_SAMPLER_KEY = "pynodeta_timestep_sampler"
# parameter names of checkpoints written before objectives were modules of their own
LEGACY_PARAMETER_PREFIXES = {"uncertainty.": "objective.uncertainty."}


class DiffusionModule(TrainingModule):
    """Trains ``model`` for ``objective`` and evaluates it with ``averaging``.

    Batches are ``x`` or ``(x, labels)`` with x (batch, C, H, W) in the data scale the model generates
    (``normalization="diffusion"``: [-1, 1]) and labels integer classes (batch,). A class-conditional network
    (``DDPMUNet(num_classes=…)``, ``EDM2UNet(label_dim=…)``) receives the labels one-hot, a fraction
    ``label_dropout`` of them zeroed (unconditional) so that it can be guided at sampling; an unconditional
    network ignores them.
    """

    def __init__(
        self,
        model: nn.Module,                                        # the network
        objective: DiffusionObjective | None = None,             # default DDPMObjective()
        averaging: EMAAveraging | PowerEMAAveraging | Literal["none"] | None = None,  # None: the objective's
        evaluation: EvalSettings | None = None,                  # default EvalSettings()
        label_dropout: float = 0.0,                              # class-conditional nets: unconditional fraction
        sample_shape: Sequence[int] | None = None,               # (C, H, W); default from the network
        optim: OptimizerPreset | None = None,                    # None: the objective's (DiffusionAdam, EDM2Adam)
        compile_training: bool | dict = False,                   # torch.compile the training forward (dict: options)
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (the network), got {type(model).__name__}")
        objective = DDPMObjective() if objective is None else objective
        if not isinstance(objective, DiffusionObjective):
            raise TypeError("objective must be a DiffusionObjective (pynodeta.train.DDPMObjective, EDMObjective or "
                            f"EDM2Objective), got {type(objective).__name__}")
        super().__init__(optim if optim is not None else objective.default_optim())
        self.model = model
        self.sample_shape = _sample_shape(model, sample_shape)
        self.objective = objective
        objective.attach(model, self.sample_shape)
        self.averaging = _check_averaging(objective.default_averaging() if averaging is None else averaging)
        self.evaluation = (evaluation if evaluation is not None else EvalSettings()).resolved(objective)
        self.denoiser()  # a network that does not fit the objective (e.g. its time range) is refused here, not mid-fit
        grid, _ = split_grid_options(self.evaluation.sampler_options or {})
        if grid:  # so is a grid outside the model's noise levels
            objective.sampling_sigmas(model, self.evaluation.sampler, self.evaluation.steps, **grid)
        self.conditioning = ClassConditioning.of(model, label_dropout)
        self.ema = EMA(model, self.averaging.decay) if isinstance(self.averaging, EMAAveraging) else None
        options = check_compile_training(compile_training)
        self.compiled_training = CompiledTraining(options) if options is not None else None
        self.last_evaluation: dict = {}

    # --- the network as a denoiser -----------------------------------------------------------------------
    def denoiser(self) -> nn.Module:
        """``denoiser(x, sigma, class_labels=None) -> x̂0`` for the image samplers, the ODE and the likelihood."""
        return self.objective.denoiser(self.model)

    def sigma_range(self) -> tuple[float, float]:
        """(sigma_min, sigma_max) of sampling: a DDPM schedule's range, EDM's 0.002 and 80."""
        return self.objective.sigma_range(self.model)

    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional network, None for an unconditional one."""
        return self.conditioning.num_classes

    # --- training ----------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x0, labels = self.conditioning.split(batch, self.sample_shape)
        labels = self.conditioning.drop(labels)
        network = self.model if self.compiled_training is None else self.compiled_training(self.model)
        loss = self.objective.loss(network, x0, labels, step=self.global_step).mean()
        # sync_dist: the logged loss is the mean over every rank's part of the batch (a scalar all-reduce per step)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x0.shape[0], sync_dist=True)
        return loss

    def trained_parameters(self) -> list[nn.Parameter]:
        """The network's parameters and those its objective learns beside it (EDM2's uncertainty head)."""
        return [p for p in (*self.model.parameters(), *self.objective.parameters()) if p.requires_grad]

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, not in on_train_batch_end: Lightning runs callbacks' batch-end hooks before the
        # module's, and a checkpoint a callback writes at this step must hold this step's EMA.
        # Once per optimiser step, also under gradient accumulation.
        if self.ema is not None:
            self.ema.update(self.global_step)  # a classic EMA's decay is per update; the count is not used

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        logs = self.objective.after_optimizer_step()  # the learned timestep sampler, every f_S steps
        if logs:
            self.log_dict(logs, on_step=True, on_epoch=False)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # the network's gradients only: a learned timestep sampler's policy has its own optimiser
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.optim.clip(self.model)

    def on_fit_start(self) -> None:
        if isinstance(self.averaging, PowerEMAAveraging) and self._power_ema_callback() is None:
            raise FitSettingError(
                f"averaging={self.averaging} evaluates with a power-function EMA, but no "
                f"PowerFunctionEMACallback among the trainer's callbacks tracks sigma_rel {self.averaging.sigma_rel}: "
                "add pynodeta.train.ema_callback.PowerFunctionEMACallback(sigma_rels=[…]) to trainer.callbacks, or "
                "pass averaging='none' to evaluate with the raw weights")
        self._check_nll_images()

    def _check_nll_images(self) -> None:
        """evaluation.nll_num_images within the test split, said before training rather than cut down after it
        (the end-of-fit bits/dim would silently be over fewer images than asked)."""
        from .diffusion_evaluation import _pixel_test_set

        count = self.evaluation.nll_num_images
        test = _pixel_test_set(self, self.trainer.datamodule) if count >= 1 else None
        if test is not None and count > len(test.images):
            raise FitSettingError(f"evaluation.nll_num_images={count}, but the test split has {len(test.images)} "
                                  f"images; set --model.init_args.evaluation.nll_num_images {len(test.images)} or "
                                  f"fewer")

    # --- validation, evaluation --------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        # the same noise and timesteps every epoch, so that epochs are compared on one estimate
        generator = torch.Generator().manual_seed(1000 + batch_idx)
        x0, labels = self.conditioning.split(batch, self.sample_shape)
        with self.ema_weights():
            loss = self.objective.loss(self.model, x0, labels, generator=generator).mean()
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=x0.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        epoch, every = self.current_epoch + 1, self.evaluation.every_n_epochs
        if self.trainer.sanity_checking or not every or epoch % every:
            return
        from .diffusion_evaluation import evaluate_samples

        with self.ema_weights():
            grid = self._output_dir() / f"samples_epoch{epoch:03d}.png"
            # every DDP rank evaluates alike (same seeds and weights), so the logged FD agrees; rank 0 saves the grid
            result = evaluate_samples(self, grid if self.trainer.is_global_zero else None)
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
        """The weight average that validation, samples and the summary use: ``"ema"``, ``"sigma_rel=0.10"``
        or ``"none"`` (``pynodeta sample``/``evaluate`` default to it)."""
        if isinstance(self.averaging, EMAAveraging):
            return "ema"
        if isinstance(self.averaging, PowerEMAAveraging):
            return sigma_rel_key(self.averaging.sigma_rel)
        return RAW_WEIGHTS

    def _power_ema_callback(self):
        from .ema_callback import PowerFunctionEMACallback

        if self._trainer is None or not isinstance(self.averaging, PowerEMAAveraging):
            return None
        wanted = self.averaging.sigma_rel
        found = [c for c in self.trainer.callbacks if isinstance(c, PowerFunctionEMACallback)
                 and any(abs(s - wanted) < 1e-12 for s in c.sigma_rels)]
        return found[0] if found else None

    @contextlib.contextmanager
    def ema_weights(self):
        """Within the block the network holds the evaluation average's weights (no-op for the raw weights,
        and for a power EMA before its first update)."""
        if self.ema is not None:
            self.ema.to(self.device)
            self.ema.store(self.model)
            self.ema.copy_to(self.model)
            try:
                yield
            finally:
                self.ema.restore(self.model)
            return
        callback = self._power_ema_callback()
        if callback is None or callback.ema is None or callback.ema.step == 0:
            yield
            return
        raw = [p.detach().clone() for p in self.model.parameters()]
        with torch.no_grad():
            averaged = callback.averaged(self.averaging.sigma_rel)
            for param, average in zip(self.model.parameters(), averaged.parameters()):
                param.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, saved in zip(self.model.parameters(), raw):
                    param.copy_(saved)

    def draw(self, num: int, sampler: str | None = None, steps: int | None = None, **options):
        """``generate`` with the module's evaluation sampler and steps as defaults (current weights)."""
        return generate(self, num, self.evaluation.sampler if sampler is None else sampler,
                        self.evaluation.steps if steps is None else steps, **options)

    def _output_dir(self) -> Path:
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        return Path(log_dir or ".")

    # --- exact resume ------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # the RNG states
        state = self.objective.training_state()
        if state is not None:
            checkpoint[TIMESTEP_SAMPLER_KEY] = state
        if self.ema is not None:
            store_average(checkpoint, "ema", self.ema)
        record = latent_record_of(self._trainer)
        if record is not None:  # trained on VAE latents: how `pynodeta sample` decodes them
            checkpoint[LATENTS_KEY] = record

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "state_dict" in checkpoint:
            checkpoint["state_dict"] = migrate_legacy_parameters(checkpoint["state_dict"])
        if TIMESTEP_SAMPLER_KEY in checkpoint and self.objective.training_state() is not None:
            self.objective.load_training_state(checkpoint[TIMESTEP_SAMPLER_KEY])
        state = stored_average_state(checkpoint, "ema") if self.ema is not None else None
        if state is not None:
            self.ema.load_state_dict(state)


def migrate_legacy_parameters(state_dict: dict) -> dict:
    """``state_dict`` with parameter names of older checkpoints renamed (``uncertainty.*`` of the former
    EDM2 module is ``objective.uncertainty.*``); other names are kept."""
    def renamed(name: str) -> str:
        for old, new in LEGACY_PARAMETER_PREFIXES.items():
            if name.startswith(old):
                return new + name[len(old):]
        return name

    return {renamed(name): value for name, value in state_dict.items()}


def _check_averaging(averaging):
    if averaging == RAW_WEIGHTS or isinstance(averaging, (EMAAveraging, PowerEMAAveraging)):
        return averaging
    raise TypeError(f"averaging must be EMAAveraging(decay), PowerEMAAveraging(sigma_rel) or 'none' (raw weights), "
                    f"got {averaging!r}")


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
