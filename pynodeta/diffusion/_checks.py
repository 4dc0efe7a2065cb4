"""Input checks shared by the samplers, the probability-flow ODE and the likelihood."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from ._known_sigmas import as_levels, same_levels, sigma_levels

# denoiser(x, sigma, **extra_args) -> x̂0; called with two arguments only when there are no extra_args
Denoiser = Callable[..., torch.Tensor]

# EDM's noise levels (Karras et al. 2022, Sec. 5): the defaults where a denoiser declares no finite range
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0


class NonFiniteDenoiserError(FloatingPointError):
    """The denoiser (or ε-network) returned NaN or Inf; the message names the noise level or step."""


def check_sigmas(sigmas: torch.Tensor, name: str = "sigmas") -> list[float]:
    """Check a noise-level grid (1-D, finite, >= 0, strictly decreasing) and return it as floats."""
    if not isinstance(sigmas, torch.Tensor):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"{name} must be a 1-D tensor of at least 2 noise levels, got shape {tuple(sigmas.shape)}")
    values = [float(s) for s in sigmas]
    if not all(torch.isfinite(sigmas)):
        raise ValueError(f"{name} must be finite, got {values}")
    if min(values) < 0:
        raise ValueError(f"{name} must be >= 0 (noise levels), got minimum {min(values)}; use e.g. karras_sigmas(n)")
    steps = [b - a for a, b in zip(values[:-1], values[1:])]
    if any(step >= 0 for step in steps):
        where = next(i for i, step in enumerate(steps) if step >= 0)
        raise ValueError(
            f"{name} must be strictly decreasing (from the noisiest level down), but {name}[{where}]="
            f"{values[where]:.6g} <= {name}[{where + 1}]={values[where + 1]:.6g}; pass sigmas.flip(0) "
            "or build them with karras_sigmas(n)"
        )
    return values


def check_option(name: str, value: float, hint: str, allow_inf: bool = False) -> float:
    """A sampler's float option as a float, refused (naming it) when NaN, negative, or infinite without
    ``allow_inf``: NaN passes every ``value < 0`` test and would turn all samples into NaN silently. A bool is
    refused too: ``s_churn=true`` would otherwise be read as 1."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number ({hint}), got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number ({hint}), got {value!r}") from None
    if math.isnan(number) or number < 0 or (math.isinf(number) and not allow_inf):
        rule = ">= 0 (inf allowed)" if allow_inf else "finite and >= 0"
        raise ValueError(f"{name} must be {rule} ({hint}), got {value!r}")
    return number


def all_finite(values: torch.Tensor) -> bool:
    """No NaN/Inf in ``values``. One sum decides the common case (NaN and ±Inf propagate through it) at a
    third of the cost of ``isfinite().all()``; only a non-finite sum, possibly an overflow, takes the exact test."""
    values = values.detach()
    return math.isfinite(float(values.sum())) or bool(torch.isfinite(values).all())


def sigma_batch(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One noise level per sample: a (batch,) tensor of x's dtype and device (its bounds known to the host
    when ``sigma`` is a float, so the denoiser's checks of it read nothing back)."""
    if isinstance(sigma, torch.Tensor):
        levels = as_levels(sigma, x)
        return same_levels(levels, levels.expand(x.shape[0]).clone())
    return sigma_levels(sigma, x)


def check_extra_args(extra_args: Mapping | None) -> dict:
    """``extra_args`` as a dict of keyword arguments for the denoiser ({} for None)."""
    if extra_args is None:
        return {}
    if not isinstance(extra_args, Mapping) or not all(isinstance(key, str) for key in extra_args):
        raise TypeError("extra_args must be a dict of keyword arguments for the denoiser, e.g. "
                        f"{{'class_labels': labels}}, got {type(extra_args).__name__}")
    return dict(extra_args)


def call_denoiser(denoiser: Denoiser, x: torch.Tensor, sigma: float | torch.Tensor, extra_args: dict) -> torch.Tensor:
    """D(x, σ, **extra_args) with σ broadcast to (batch,); refuses a wrong output shape.

    Without extra_args the denoiser gets two arguments only, so plain ``f(x, sigma)`` callables keep working.
    """
    sigmas = sigma_batch(sigma, x)
    out = denoiser(x, sigmas, **extra_args) if extra_args else denoiser(x, sigmas)
    if out.shape != x.shape:
        raise ValueError(f"the denoiser must return x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
    return out


def nonfinite_denoiser_message(sigma: float) -> str:
    return (f"the denoiser returned NaN/Inf at sigma={sigma:.6g}: check the network's weights and its input "
            "scaling at that noise level (e.g. EDMPrecond's c_in)")


def denoiser_sigma_range(denoiser: Denoiser) -> tuple[float, float]:
    """The noise levels a denoiser accepts, from its ``sigma_min``/``sigma_max`` attributes (NVlabs EDM's
    convention: ``EDMPrecond`` declares 0 and inf, a ``DenoiserFromEpsilon`` its schedule's σ_0 and σ_{T−1});
    (0, inf) for a denoiser that declares none."""
    low, high = getattr(denoiser, "sigma_min", 0.0), getattr(denoiser, "sigma_max", math.inf)
    return float(low), float(high)


def default_sigma_range(denoiser: Denoiser) -> tuple[float, float]:
    """(σ_min, σ_max) of a solve over the denoiser's whole range: its declared ends where they are finite
    and > 0, EDM's 0.002 and 80 otherwise."""
    low, high = denoiser_sigma_range(denoiser)
    return (low if low > 0 else EDM_SIGMA_MIN), (high if math.isfinite(high) else EDM_SIGMA_MAX)


def check_within_denoiser_range(denoiser: Denoiser, noise_levels: dict[str, float], hint: str = "") -> None:
    """Refuse (never clamp) a requested noise level outside the denoiser's declared range, naming the argument."""
    low, high = denoiser_sigma_range(denoiser)
    for name, value in noise_levels.items():
        if not low <= value <= high:
            raise ValueError(
                f"{name}={value:.6g} lies outside the noise levels the denoiser accepts, [{low:.6g}, {high:.6g}] "
                f"(its sigma_min/sigma_max; a DDPM model has no σ beyond its schedule's): pass a {name} in that "
                f"range{hint}")
