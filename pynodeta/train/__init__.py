"""Training: LightningModules, the papers' optimiser presets and the ``pynodeta`` command.

- ``TrainingModule``: the family-neutral base LightningModule (optimiser preset, clipping, stage
  logging, exact RNG resume); ``pynodeta fit`` trains any subclass.
- ``NODEModule`` and its ``NODEClassifier`` / ``TrajectoryRegressor``: neural-ODE modules logging
  loss, accuracy (or MSE/MAE), forward and backward NFE per batch and the TA-BN regulariser.
- ``DiffusionModule(model, objective, averaging=…, evaluation=EvalSettings(…))``: a network trained
  for ``DDPMObjective``, ``EDMObjective`` or ``EDM2Objective`` (loss, denoiser, default sampler), class
  labels and label dropout for conditional networks, evaluated with ``EMAAveraging`` or
  ``PowerEMAAveraging`` (sample grids, FD, conditional accuracy, bits/dim); ``DiffusionAdam`` / ``EDM2Adam``.
- ``AdamWPreset``, ``PlateauSGD`` / ``TABNAdamW``: optimiser, schedule and clipping as typed presets
  (a plain default and the two papers' setups).
- ``AtomicCheckpointIO``: checkpoints written to a temporary file beside the target, then renamed.
- ``load_run``: a trained run read back (module, data, weight averages) under one trust policy, as
  every command reads it; ``Run.use_average("ema" | "sigma_rel=0.10" | "none")`` picks the weights.
- ``ModelCheckpoint``: Lightning's, except that ``last.ckpt`` is always the newest state (written
  every epoch, N steps or time interval, and when training ends); every shipped config uses it.
- ``ProgressLines``: a plain progress line every N seconds, for runs whose output is a log.
- ``AdaptiveThreads``: up to the fit's torch threads, fewer while other processes use the cores (Linux).
- ``StopOnNonFiniteLoss`` / ``TrainingDiverged``: every ``pynodeta fit`` stops at its first NaN or
  infinite training loss, before the optimiser step.
- ``pynodeta.train.cli.main``: the command (``pynodeta fit --config digits_tabn``).
"""

from .adaptive_threads import AdaptiveThreads
from .averaging import EMAAveraging, PowerEMAAveraging
from .base import TrainingModule
from .checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from .checkpointing import ModelCheckpoint
from .configs import shipped_config_path, shipped_configs
from .diffusion import DiffusionModule
from .diffusion_optim import DiffusionAdam
from .divergence import StopOnNonFiniteLoss, TrainingDiverged
from .edm2_optim import EDM2Adam
from .evaluation_settings import EvalSettings
from .modules import NODEClassifier, NODEModule, TrajectoryRegressor
from .nfe import backward_nfe, forward_nfe, ode_solvers
from .objectives import DDPMObjective, DiffusionObjective, EDM2Objective, EDMObjective
from .optim import AdamWPreset, OptimizerPreset, PlateauSGD, TABNAdamW, clip_grad_norms, tabn_affine_parameters
from .progress import ProgressLines
from .rng import collect_rng_states, restore_rng_states
from .run_loader import Run, load_run
from .summary import RunSummary

__all__ = [
    "TrainingModule",
    "NODEModule",
    "NODEClassifier",
    "TrajectoryRegressor",
    "DiffusionModule",
    "DiffusionObjective",
    "DDPMObjective",
    "EDMObjective",
    "EDM2Objective",
    "EMAAveraging",
    "PowerEMAAveraging",
    "EvalSettings",
    "OptimizerPreset",
    "AdamWPreset",
    "PlateauSGD",
    "TABNAdamW",
    "DiffusionAdam",
    "EDM2Adam",
    "clip_grad_norms",
    "tabn_affine_parameters",
    "ode_solvers",
    "forward_nfe",
    "backward_nfe",
    "AtomicCheckpointIO",
    "atomic_torch_save",
    "ModelCheckpoint",
    "StopOnNonFiniteLoss",
    "ProgressLines",
    "AdaptiveThreads",
    "TrainingDiverged",
    "collect_rng_states",
    "restore_rng_states",
    "shipped_configs",
    "shipped_config_path",
    "RunSummary",
    "Run",
    "load_run",
]
