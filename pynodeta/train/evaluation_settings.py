"""``EvalSettings``: how a ``DiffusionModule`` is evaluated during and after ``fit``, declared in one place."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pynodeta.diffusion.guidance import check_guidance
from pynodeta.diffusion.sampler_options import check_sampler_options
from pynodeta.ode import IController, SolverSettings

__all__ = ["EvalSettings", "EVALUATION_SOLVER"]

# the bits/dim estimate's and the ode sampler's solve unless EvalSettings.solver says otherwise (the setting of
# every committed likelihood figure)
EVALUATION_SOLVER = SolverSettings(method="dopri5", controller=IController(rtol=1e-3, atol=1e-3))


def _require_int(name: str, value, low: int, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low} ({meaning}), got {value!r}")


@dataclass(frozen=True)
class EvalSettings:
    """Sampler, sample count, FD features and likelihood of validation and of the summary at the end of ``fit``.

    Attributes:
        sampler: an image sampler of ``pynodeta.diffusion.SAMPLERS`` or ``"ode"``; None: the objective's
            default (DDIM for DDPM, Heun for EDM and EDM2).
        steps: its noise levels / DDIM steps; None: the objective's default (50, 18, 32).
        every_n_epochs: sample a grid and compute FD every n validation epochs (0: only at the end).
        num_samples: images drawn for the FD.
        nll_num_images: test images of the bits/dim estimate at the end (0: skip it).
        num_bins: values a pixel takes (the dequantisation of bits/dim): 256 for 8-bit images, 17 for digits.
        inception_weights: a local Inception-v3 file for FD of images other than 8×8 digits: NVlabs'
            ``.pkl``/``.pt`` or pytorch-fid's ``.pth``
            (FID's features; they cannot be downloaded at run time). None: FD only for digits, NaN otherwise.
        guidance: classifier-free guidance weight w of class-conditional models' evaluation samples
            (D = D_u + w·(D_c − D_u); 1: the conditional model alone).
        solver: the ODE solve of the bits/dim estimate and of the ``ode`` image sampler, a
            ``pynodeta.SolverSettings``; None: dopri5 with ``IController(rtol=1e-3, atol=1e-3)``.
        sampler_options: the sampler's own options, e.g. ``{"clip_x0": True}`` for ``ddim`` (x̂0 clipped to
            [-1, 1] at every step, diffusers' ``clip_sample``) or ``{"eta": 0.5}``; checked against the
            sampler's signature (:func:`pynodeta.diffusion.check_sampler_options`); a sampler that walks Karras
            levels also takes the grid's ``sigma_min``, ``sigma_max`` and ``rho`` (``{"sigma_min": 0.2}``: the
            last level before 0). They belong to this sampler: ``pynodeta sample`` with another ``--sampler``
            does not use them. None: none.
    """

    sampler: str | None = None
    steps: int | None = None
    every_n_epochs: int = 1
    num_samples: int = 512
    nll_num_images: int = 64
    num_bins: int = 256
    inception_weights: str | None = None
    guidance: float = 1.0
    solver: SolverSettings | None = None
    sampler_options: dict | None = None  # last, so that positional settings keep their places

    def __post_init__(self) -> None:
        if self.sampler is not None and not isinstance(self.sampler, str):
            raise TypeError(f"sampler must be a sampler name or None, got {self.sampler!r}")
        if self.steps is not None:
            _require_int("steps", self.steps, 1, "the sampler's noise levels")
        _require_int("every_n_epochs", self.every_n_epochs, 0, "0: only at the end of fit")
        _require_int("num_samples", self.num_samples, 2, "the Fréchet distance estimates a covariance")
        _require_int("nll_num_images", self.nll_num_images, 0, "0: no bits/dim")
        _require_int("num_bins", self.num_bins, 2, "pixel values: 256, digits 17")
        if self.inception_weights is not None and not Path(self.inception_weights).is_file():
            raise FileNotFoundError(f"inception_weights {self.inception_weights!r} is not a file; point it at a local "
                                    "Inception-v3 .pkl (NVlabs' FID network), .pt or pytorch-fid's .pth, or leave it "
                                    "out (FD is NaN for images other than 8×8 digits)")
        check_guidance(self.guidance)
        if self.solver is not None and not isinstance(self.solver, SolverSettings):
            raise TypeError(f"solver must be a pynodeta.SolverSettings or None, got {type(self.solver).__name__}")

    @property
    def ode_solver(self) -> SolverSettings:
        """``solver``, or ``EVALUATION_SOLVER`` when it is None."""
        return self.solver if self.solver is not None else EVALUATION_SOLVER

    def resolved(self, objective) -> EvalSettings:
        """These settings with sampler and steps filled in from ``objective``'s defaults, and checked against it."""
        from .diffusion_sampling import check_sampler_name

        settings = replace(self, sampler=self.sampler or objective.default_sampler,
                           steps=self.steps or objective.default_steps)
        objective.check_sampler(check_sampler_name(settings.sampler))
        options = check_sampler_options(settings.sampler, self.sampler_options, "evaluation.sampler_options")
        return replace(settings, sampler_options=options or None)
