"""Drawing images from a trained diffusion module with any of pynodeta's image samplers, and saving grids.

Every sampler of ``pynodeta.diffusion.SAMPLERS`` walks the noise levels the module's objective gives it
(Karras levels between the denoiser's ``sigma_min`` and ``sigma_max``, or the ends and ρ its ``sigma_min``,
``sigma_max`` and ``rho`` options set; a DDPM schedule's own levels for ``ddpm`` and ``ddim``); ``ode`` solves
the probability-flow ODE adaptively through ``pynodeta.solve``.
Class-conditional models draw the classes asked for, optionally with classifier-free guidance.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

import pynodeta.diffusion as pd
from pynodeta._atomic import atomic_write
from pynodeta.diffusion.guidance import GuidedDenoiser, check_guidance
from pynodeta.diffusion.sampler_options import ODE_SAMPLER, split_grid_options
from pynodeta.ode import IController, SolverSettings
from pynodeta.ode.stats import record_stats

from .adaptive_threads import poll_installed
from .conditioning import one_hot_labels

__all__ = ["ODE_SAMPLER", "OWN_STEP_SAMPLERS", "sampler_names", "check_sampler_name", "resolved_sampler_options",
           "describe_sampler_options", "Samples", "SampleBatch", "generate", "generate_batches", "requested_labels",
           "save_grid"]


# the samplers that choose their own steps, so that ``steps`` means nothing to them: ddpm walks all T timesteps of
# the schedule, dpm_adaptive (which uses only the grid's ends) and ode step adaptively
OWN_STEP_SAMPLERS = ("ddpm", "dpm_adaptive", ODE_SAMPLER)


def sampler_names() -> tuple[str, ...]:
    """Every image sampler a diffusion module can be drawn with: the registry's and ``"ode"``."""
    return (*pd.SAMPLERS, ODE_SAMPLER)


def check_sampler_name(sampler: str) -> str:
    if sampler not in sampler_names():
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(sampler_names())}")
    return sampler


def resolved_sampler_options(module, sampler: str, sampler_options=None, where: str = "sampler_options") -> dict:
    """The options ``sampler`` is called with: ``sampler_options`` when given (checked against the sampler; the
    errors name ``where``), else the run's ``evaluation.sampler_options`` when ``sampler`` is the run's evaluation
    sampler, else none. A run's options are for its own sampler: ``clip_x0`` of a DDIM run means nothing to
    ``heun``."""
    if sampler_options is not None:
        return pd.check_sampler_options(sampler, sampler_options, where)
    evaluation = module.evaluation
    if sampler != evaluation.sampler:
        return {}
    return pd.check_sampler_options(sampler, evaluation.sampler_options, "evaluation.sampler_options")


def describe_sampler_options(options: dict | None) -> str:
    """`` (clip_x0=True, eta=0.5)`` for a line that names the sampler; empty without options."""
    return f" ({', '.join(f'{name}={value}' for name, value in options.items())})" if options else ""


@dataclass(frozen=True)
class Samples:
    """Generated images with what they cost."""

    images: torch.Tensor    # (num, channels, height, width), the model's data scale ([-1, 1] for images)
    sampler: str
    nfe: float              # network evaluations per batch (mean over batches for "ode")
    seconds: float          # wall time of the whole draw
    labels: torch.Tensor | None = None  # the class of each image (class-conditional models), (num,)


def requested_labels(class_labels, num: int, num_classes: int | None) -> torch.Tensor | None:
    """The class of each of ``num`` images: None (unconditional model), an int (every image), ``"all"`` (classes
    in turn, 0, 1, …, so every class gets num/num_classes images) or a sequence/tensor of ``num`` classes."""
    if num_classes is None:
        if class_labels is not None:
            raise ValueError(f"class_labels={class_labels!r} needs a class-conditional model; this one has no classes")
        return None
    if class_labels is None:
        raise ValueError(f"the model is class-conditional ({num_classes} classes): pass class_labels (a class, "
                         "'all' for every class in turn, or one class per image)")
    if isinstance(class_labels, str):
        if class_labels != "all":
            raise ValueError(f"class_labels must be a class, 'all' or one class per image, got {class_labels!r}")
        return torch.arange(num) % num_classes
    if isinstance(class_labels, int) and not isinstance(class_labels, bool):
        labels = torch.full((num,), class_labels, dtype=torch.long)
    else:
        labels = torch.as_tensor(class_labels)
        if labels.dtype.is_floating_point or labels.shape != (num,):
            raise ValueError(f"class_labels must hold one integer class per image, shape ({num},), got "
                             f"{labels.dtype} {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"class_labels must lie in [0, {num_classes}), got {class_labels!r}")
    return labels.long()


def _check(module, sampler: str, steps: int, num: int, guidance: float) -> None:
    check_sampler_name(sampler)
    module.objective.check_sampler(sampler)
    if num < 1:
        raise ValueError(f"num must be >= 1 images, got {num}")
    if sampler != ODE_SAMPLER and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_guidance(guidance)
    if guidance != 1 and module.num_classes is None:
        raise ValueError(f"guidance={guidance} needs a class-conditional model; this one has no classes")


def _draw_batch(module, sampler: str, noise: torch.Tensor, sigmas: torch.Tensor | None, labels: torch.Tensor | None,
                guidance: float, solver, generator: torch.Generator | None, disable: bool | None,
                precision: str = "32", options: dict | None = None) -> torch.Tensor:
    """One batch from standard normal ``noise`` (and one-hot ``labels`` of a conditional model) down ``sigmas``
    (None for ``ode``); ``options``: the sampler's own."""
    denoiser = module.denoiser()
    if pd.autocast_dtype(precision) is not None:  # the network under autocast, the sampler's state in float32
        denoiser = pd.AutocastDenoiser(denoiser, precision)
    if guidance != 1:
        denoiser = GuidedDenoiser(denoiser, guidance)
    extra_args = {} if labels is None else {"class_labels": labels}
    if sampler == ODE_SAMPLER:
        # stop at 10·σ_min and let one denoiser call remove the noise left there (probability_flow keeps
        # every drift evaluation inside [σ_end, σ_max] on its own)
        sigma_min, sigma_max = module.sigma_range()
        sigma_end = 10 * sigma_min
        solution = pd.probability_flow(denoiser, noise * sigma_max, sigma_max, sigma_end, solver=solver, **extra_args)
        x = solution.ys[-1]
        sigma = torch.full((x.shape[0],), sigma_end, dtype=x.dtype, device=x.device)
        return denoiser(x, sigma, **extra_args)
    sigmas = sigmas.to(noise.device)
    x = noise * module.objective.prior_scale(sampler, sigmas)
    return pd.SAMPLERS[sampler](denoiser, x, sigmas, extra_args=extra_args, generator=generator, disable=disable,
                                **(options or {}))


@dataclass(frozen=True)
class SampleBatch:
    """One batch of generated images and the network evaluations it took."""

    images: torch.Tensor    # (count, channels, height, width)
    nfe: float
    labels: torch.Tensor | None = None  # (count,) classes of a class-conditional model


def generate_batches(
    module,                                  # a DiffusionModule (its current weights are used)
    num: int,                                # images to draw
    sampler: str = "heun",                   # one of sampler_names()
    steps: int = 18,                         # noise levels / DDIM steps (ignored by OWN_STEP_SAMPLERS)
    *,
    class_labels: int | str | Sequence[int] | torch.Tensor | None = None,  # conditional models: see requested_labels
    guidance: float = 1.0,                   # classifier-free guidance w: D_u + w·(D_c − D_u)
    solver=None,                             # "ode": a SolverSettings; None: the module's evaluation.ode_solver
    batch_size: int = 256,                   # images per sampler call
    generator: torch.Generator | None = None,  # CPU generator for the noise (None: the global RNG)
    disable: bool | None = True,             # the samplers' progress bar: True off, None on where stderr is a terminal
    precision: str = "32",                   # the network's autocast: "32" (none), "bf16", "16"; x stays float32
    sampler_options: dict | None = None,     # the sampler's own, e.g. {"clip_x0": True}; None: the run's, see below
) -> Iterator[SampleBatch]:
    """Draw ``num`` images ``batch_size`` at a time, so that memory stays that of one batch whatever ``num``.

    The noise of each batch is drawn when the batch is, from ``generator``: the images are the same as
    :func:`generate`'s. NFE is read from the samplers' published SolveStats (a guided evaluation runs the
    network on a doubled batch and counts once). A batch with NaN/Inf images raises FloatingPointError.
    ``precision="bf16"`` or ``"16"`` runs the network under autocast (``pynodeta.diffusion.AutocastDenoiser``)
    while the sampler's state, noise and steps stay float32. ``sampler_options``: see
    :func:`resolved_sampler_options`.
    """
    _check(module, sampler, steps, num, guidance)
    options = resolved_sampler_options(module, sampler, sampler_options)
    pd.autocast_dtype(precision)  # an unknown precision is refused before anything is drawn
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = requested_labels(class_labels, num, module.num_classes)
    solver = _ode_solver(module, solver) if sampler == ODE_SAMPLER else None
    grid, own_options = split_grid_options(options)
    # built once, before anything is drawn, so that a grid outside the model's noise levels is refused at once
    sigmas = None if sampler == ODE_SAMPLER else module.objective.sampling_sigmas(module.model, sampler, steps,
                                                                                     **grid)  # DDPM grids: float64
    shape, device = module.sample_shape, module.device
    for first in range(0, num, batch_size):
        poll_installed()  # a governor of the thread count (AdaptiveThreads, --adaptive-threads) follows the load
        count = min(batch_size, num - first)
        noise = torch.randn(count, *shape, generator=generator).to(device)
        batch_labels = None if labels is None else labels[first:first + count]
        one_hot = None if batch_labels is None else one_hot_labels(batch_labels, module.num_classes, noise)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), record_stats() as log:
                images = _draw_batch(module, sampler, noise, sigmas, one_hot, guidance, solver, generator, disable,
                                     precision, own_options)
        finally:
            module.train(was_training)
        if not torch.isfinite(images).all():
            raise FloatingPointError(f"sampler {sampler!r} produced NaN/Inf images; try more steps or tighter rtol")
        yield SampleBatch(images, float(sum(stats.nfe for stats in log)), batch_labels)


def _ode_solver(module, solver):
    """The ``ode`` sampler's solve: ``solver``, else the module's ``evaluation.ode_solver``, with a first step
    of σ_max/20 unless it sets one. Set, not guessed: the initial-step rule proposes one across most of the σ
    range, whose error estimate passes at rtol 1e-3 while the samples come out too narrow (std 0.59 instead of
    0.70 on Gaussian data)."""
    if solver is None:
        solver = module.evaluation.ode_solver
    if not isinstance(solver, SolverSettings):
        raise TypeError(f"solver must be a pynodeta.SolverSettings, got {type(solver).__name__}")
    controller = solver.controller
    if isinstance(controller, IController) and controller.first_step is None:
        controller = replace(controller, first_step=module.sigma_range()[1] / 20)
        solver = replace(solver, controller=controller)
    return solver


def generate(module, num: int, sampler: str = "heun", steps: int = 18, **options) -> Samples:
    """Draw ``num`` images at once (:func:`generate_batches`' options); NFE is the mean over batches."""
    started = time.perf_counter()
    batches = list(generate_batches(module, num, sampler, steps, **options))
    labels = None if batches[0].labels is None else torch.cat([b.labels for b in batches])
    return Samples(torch.cat([b.images for b in batches]), sampler, float(np.mean([b.nfe for b in batches])),
                   time.perf_counter() - started, labels)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 4) -> Path:
    """Save images (n, C, H, W) in [-1, 1] as one PNG grid (values outside are clipped for display only).

    Each pixel becomes a ``scale``×``scale`` block so that 8×8 digits stay visible. Returns the path.
    """
    import matplotlib.image

    images = images.detach().float().cpu()
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (n, 1 or 3, height, width), got {tuple(images.shape)}")
    n, channels, height, width = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    pad = 1
    grid = np.ones((rows * (height + pad) + pad, nrow * (width + pad) + pad, channels), dtype=np.float32)
    pixels = ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[top:top + height, left:left + width] = pixels[i]
    grid = np.kron(grid, np.ones((scale, scale, 1), dtype=np.float32))
    path = Path(path)
    atomic_write(path, lambda file: matplotlib.image.imsave(file, grid[..., 0] if channels == 1 else grid,
                                                            cmap="gray", vmin=0, vmax=1, format="png"))
    return path
