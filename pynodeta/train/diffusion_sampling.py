"""Drawing images from a trained diffusion module with any of pynodeta's samplers, and saving grids.

Noise-level samplers (``heun``, ``euler``, ``dpmpp_2m``) run on Karras noise levels between the
model's ``sigma_min`` and ``sigma_max``; ``ode`` solves the probability-flow ODE adaptively through
``pynodeta.solve``; ``ddim`` and ``ddpm`` are the discrete-time samplers of DDPM models.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import pynodeta.diffusion as pd
from pynodeta._atomic import atomic_write
from pynodeta.ode.stats import record_stats

__all__ = ["SAMPLER_NAMES", "Samples", "SampleBatch", "generate", "generate_batches", "save_grid"]

SAMPLER_NAMES = ("heun", "euler", "dpmpp_2m", "ode", "ddim", "ddpm")
_NOISE_LEVEL_SAMPLERS = {"heun": pd.sample_heun, "euler": pd.sample_euler, "dpmpp_2m": pd.sample_dpmpp_2m}


@dataclass(frozen=True)
class Samples:
    """Generated images with what they cost."""

    images: torch.Tensor    # (num, channels, height, width), the model's data scale ([-1, 1] for images)
    sampler: str
    nfe: float              # network evaluations per batch (mean over batches for "ode")
    seconds: float          # wall time of the whole draw


def _check(module, sampler: str, steps: int, num: int) -> None:
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    if sampler in ("ddim", "ddpm") and module.objective != "ddpm":
        raise ValueError(f"sampler {sampler!r} needs a DDPM model (objective 'ddpm'); this one is "
                         f"{module.objective!r}: use heun, euler, dpmpp_2m or ode")
    if num < 1:
        raise ValueError(f"num must be >= 1 images, got {num}")
    if sampler != "ode" and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def _draw_batch(module, sampler: str, noise: torch.Tensor, steps: int, rtol: float, atol: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """One batch from standard normal ``noise``."""
    if sampler == "ddpm":
        return pd.sample_ddpm(module.eps_model(), noise, module.schedule, generator=generator)
    if sampler == "ddim":
        return pd.sample_ddim(module.eps_model(), noise, module.schedule, num_steps=steps)
    denoiser = module.denoiser()
    sigma_min, sigma_max = module.sigma_range()
    if sampler == "ode":
        # stop at 10·σ_min and let one denoiser call remove the noise left there (probability_flow keeps
        # every drift evaluation inside [σ_end, σ_max] on its own). The first step is set, not guessed: the
        # initial-step rule proposes one across most of the σ range, whose error estimate passes at
        # rtol 1e-3 while the samples come out too narrow (std 0.59 instead of 0.70 on Gaussian data)
        sigma_end = 10 * sigma_min
        solution = pd.probability_flow(denoiser, noise * sigma_max, sigma_max, sigma_end, method="dopri5",
                                       rtol=rtol, atol=atol, options={"first_step": sigma_max / 20})
        x = solution.ys[-1]
        return denoiser(x, torch.full((x.shape[0],), sigma_end, dtype=x.dtype, device=x.device))
    sigmas = pd.karras_sigmas(steps, sigma_min=sigma_min, sigma_max=sigma_max).to(noise)
    return _NOISE_LEVEL_SAMPLERS[sampler](denoiser, noise * sigmas[0], sigmas)


@dataclass(frozen=True)
class SampleBatch:
    """One batch of generated images and the network evaluations it took."""

    images: torch.Tensor    # (count, channels, height, width)
    nfe: float


def generate_batches(
    module,                                  # a DiffusionModule (its current weights are used)
    num: int,                                # images to draw
    sampler: str = "heun",                   # one of SAMPLER_NAMES
    steps: int = 18,                         # noise levels / DDIM steps (ignored by "ode" and "ddpm")
    *,
    rtol: float = 1e-3,                      # "ode": dopri5 tolerances
    atol: float = 1e-3,
    batch_size: int = 256,                   # images per sampler call
    generator: torch.Generator | None = None,  # CPU generator for the noise (None: the global RNG)
) -> Iterator[SampleBatch]:
    """Draw ``num`` images ``batch_size`` at a time, so that memory stays that of one batch whatever ``num``.

    The noise of each batch is drawn when the batch is, from ``generator``: the images are the same as
    :func:`generate`'s. NFE is read from the samplers' published SolveStats. A batch with NaN/Inf images
    raises FloatingPointError.
    """
    _check(module, sampler, steps, num)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shape, device = module.sample_shape, module.device
    for first in range(0, num, batch_size):
        count = min(batch_size, num - first)
        noise = torch.randn(count, *shape, generator=generator).to(device)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), record_stats() as log:
                images = _draw_batch(module, sampler, noise, steps, rtol, atol, generator)
        finally:
            module.train(was_training)
        if not torch.isfinite(images).all():
            raise FloatingPointError(f"sampler {sampler!r} produced NaN/Inf images; try more steps or tighter rtol")
        yield SampleBatch(images, float(sum(stats.nfe for stats in log)))


def generate(module, num: int, sampler: str = "heun", steps: int = 18, **options) -> Samples:
    """Draw ``num`` images at once (:func:`generate_batches`' options); NFE is the mean over batches."""
    started = time.perf_counter()
    batches = list(generate_batches(module, num, sampler, steps, **options))
    return Samples(torch.cat([b.images for b in batches]), sampler, float(np.mean([b.nfe for b in batches])),
                   time.perf_counter() - started)


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
