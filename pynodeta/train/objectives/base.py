"""``DiffusionObjective``: what a diffusion model is trained for and how its network becomes a denoiser.

An objective owns three things and nothing else: the per-sample training loss of a network, the network
seen as a denoiser ``D(x, σ, class_labels=None) -> x̂0`` (with the noise range it is defined on) and the
image sampler it is sampled with by default. ``DiffusionModule`` composes a network with one objective; an
objective builds only what it uses (an EDM objective has no DDPM schedule, no timestep sampler).

Objectives are ``nn.Module``s so that parameters the loss learns beside the network (EDM2's uncertainty
head) are saved, moved and optimised with the module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from pynodeta.diffusion._checks import EDM_SIGMA_MAX, EDM_SIGMA_MIN

__all__ = ["DiffusionObjective"]


class DiffusionObjective(nn.Module):
    """Base class of ``DDPMObjective``, ``EDMObjective`` and ``EDM2Objective``.

    A subclass implements :meth:`loss` and :meth:`denoiser`, and sets ``default_sampler`` and
    ``default_steps`` (the image sampler of validation and of ``pynodeta sample`` when none is named).
    """

    default_sampler: ClassVar[str] = "heun"
    default_steps: ClassVar[int] = 18

    def attach(self, model: nn.Module, sample_shape: Sequence[int]) -> None:
        """Called once by ``DiffusionModule`` with its network and sample shape (C, H, W): build what depends
        on them (DDPM's timestep sampler needs the channel count). The default builds nothing."""

    def loss(self, model: nn.Module, x0: torch.Tensor, class_labels: torch.Tensor | None = None, *,
             generator: torch.Generator | None = None, step: int | None = None) -> torch.Tensor:
        """The training loss of ``model`` on clean images ``x0`` (batch, C, H, W), per sample: (batch,).

        ``class_labels``: one-hot (batch, num_classes) or None; ``generator``: the noise's generator (None:
        the global RNG); ``step``: the optimiser step when called from training (loss-aware timestep samplers
        learn from it), None in validation."""
        raise NotImplementedError

    def denoiser(self, model: nn.Module) -> nn.Module:
        """``model`` as a denoiser ``D(x, sigma, class_labels=None) -> x̂0`` with ``sigma_min``/``sigma_max``."""
        raise NotImplementedError

    def sigma_range(self, model: nn.Module) -> tuple[float, float]:
        """(sigma_min, sigma_max) that sampling and the likelihood span: EDM's 0.002 and 80 (Karras et al. 2022,
        Sec. 5) where the denoiser accepts any σ, else the denoiser's own (a DDPM schedule's)."""
        return _with_edm_defaults(*self._defined_sigmas(model))

    def _defined_sigmas(self, model: nn.Module) -> tuple[float, float]:
        """The noise levels the denoiser is defined on: its ``sigma_min``/``sigma_max``, (0, ∞) where it has none."""
        denoiser = self.denoiser(model)
        return float(getattr(denoiser, "sigma_min", 0.0)), float(getattr(denoiser, "sigma_max", math.inf))

    def sampling_sigmas(self, model: nn.Module, sampler: str, steps: int, *, sigma_min: float | None = None,
                        sigma_max: float | None = None, rho: float = 7.0) -> torch.Tensor:
        """The noise levels an image sampler walks for ``steps``: Karras et al.'s grid (EDM Eq. 5) from
        ``sigma_max`` to ``sigma_min``, ending at 0; None takes that end of :meth:`sigma_range`. A grid end outside
        the levels the denoiser is defined on (a DDPM schedule's) is refused, not clamped. ``DDPMObjective``
        gives its own schedule's levels to ``ddpm``/``ddim``."""
        from pynodeta.diffusion import karras_sigmas

        defined = self._defined_sigmas(model)
        low, high = _with_edm_defaults(*defined)
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if value is not None and not defined[0] * (1 - 1e-6) <= value <= defined[1] * (1 + 1e-6):
                raise ValueError(f"sampler option {name}={value:g} lies outside the noise levels this model's "
                                 f"denoiser is defined on, [{defined[0]:.6g}, {defined[1]:.6g}]; choose one inside")
        first, last = high if sigma_max is None else sigma_max, low if sigma_min is None else sigma_min
        if not last < first:
            raise ValueError(f"sampler options: the grid's sigma_min ({last:g}) must lie below its sigma_max "
                             f"({first:g}); the model's own range is [{low:.6g}, {high:.6g}]")
        return karras_sigmas(steps, sigma_min=last, sigma_max=first, rho=rho)

    def prior_scale(self, sampler: str, sigmas: torch.Tensor) -> torch.Tensor:
        """The standard deviation of the noise a sampler starts from at ``sigmas[0]``: σ_max itself (EDM)."""
        return sigmas[0]

    def check_sampler(self, sampler: str) -> None:
        """Refuse an image sampler this objective cannot drive (the DDPM samplers need a DDPM schedule)."""
        if sampler in ("ddpm", "ddim"):
            raise ValueError(f"sampler {sampler!r} walks a DDPM schedule's timesteps and needs DDPMObjective; "
                             f"{type(self).__name__} models sample with heun, euler, dpmpp_2m, ode or another "
                             "noise-level sampler of pynodeta.diffusion.SAMPLERS")

    # --- training hooks (no-ops unless the objective learns something beside the network) ---------------
    def after_optimizer_step(self) -> dict[str, float] | None:
        """Called once per optimiser step after the weights changed; returns metrics to log, or None."""
        return None

    def training_state(self) -> dict | None:
        """State beside the parameters that an exact resume needs (a timestep sampler's), or None."""
        return None

    def load_training_state(self, state: dict) -> None:
        """Restore :meth:`training_state`'s output."""

    def default_optim(self):
        """The optimiser preset of this objective's paper; ``DiffusionModule`` uses it when given none."""
        from ..diffusion_optim import DiffusionAdam

        return DiffusionAdam()

    def default_averaging(self):
        """The weight average evaluation uses when ``DiffusionModule`` is given none."""
        from ..averaging import EMAAveraging

        return EMAAveraging()


def _with_edm_defaults(low: float, high: float) -> tuple[float, float]:
    """A denoiser's defined range with EDM's 0.002 and 80 in place of an open end (0 or ∞)."""
    return (low if low > 0 else EDM_SIGMA_MIN, high if math.isfinite(high) else EDM_SIGMA_MAX)
