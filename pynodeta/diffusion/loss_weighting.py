"""Per-timestep loss weightings as functions of the signal-to-noise ratio SNR(t) = ᾱ_t / (1 − ᾱ_t).

They change the training objective on purpose (unlike importance weights, which keep it):
``loss = (weighting(snr[t]) * per_sample_mse).mean()``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

__all__ = ["LOSS_WEIGHTINGS", "make_loss_weighting", "min_snr_weight", "no_weight", "p2_weight"]

PREDICTIONS = ("epsilon", "sample", "v")


def _check_snr(snr: Tensor) -> Tensor:
    if not isinstance(snr, Tensor):
        raise TypeError(f"snr must be a tensor of signal-to-noise ratios, got {type(snr).__name__}")
    if not torch.isfinite(snr).all() or (snr < 0).any():
        raise ValueError("snr must be finite and >= 0 (SNR = ᾱ/(1 − ᾱ)); got a negative, NaN or infinite entry")
    return snr


def min_snr_weight(snr: Tensor, gamma: float = 5.0, prediction: str = "epsilon") -> Tensor:
    """Min-SNR-γ weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting").

    The weight that makes each target's loss equal to the x0-loss weighted by min(SNR, γ):
    epsilon → min(SNR, γ)/SNR, sample (x0) → min(SNR, γ), v → min(SNR, γ)/(SNR + 1).
    """
    _check_snr(snr)
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0 (the paper uses 5), got {gamma}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    clipped = snr.clamp(max=gamma)
    if prediction == "sample":
        return clipped
    if prediction == "v":
        return clipped / (snr + 1)
    # min(SNR, γ)/SNR written without 0/0: it is exactly 1 wherever SNR <= γ (SNR = 0 at t = T included).
    return torch.where(snr > gamma, gamma / snr.clamp(min=gamma), torch.ones_like(snr))


def p2_weight(snr: Tensor, k: float = 1.0, gamma: float = 1.0) -> Tensor:
    """P2 weighting λ_t = 1/(k + SNR(t))^γ (Choi et al. 2022, "Perception Prioritized Training").

    The paper uses k = 1 and γ ∈ {0.5, 1}.
    """
    _check_snr(snr)
    if not k > 0:
        raise ValueError(f"k must be > 0 (it keeps 1/(k + SNR) finite at SNR = 0; the paper uses 1), got {k}")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0 (0 gives uniform weights; the paper uses 0.5 or 1), got {gamma}")
    return (k + snr).pow(-gamma)


def no_weight(snr: Tensor) -> Tensor:
    """Weight 1 for every timestep: the plain (simple) DDPM objective."""
    return torch.ones_like(_check_snr(snr))


LOSS_WEIGHTINGS = ("none", "p2", "min-snr")


def make_loss_weighting(name: str, **options) -> Callable[[Tensor], Tensor]:
    """The weighting ``snr -> weights`` called ``name`` (none | p2 | min-snr) with its ``options``.

    >>> weigh = make_loss_weighting("min-snr", gamma=5.0, prediction="epsilon")
    >>> weights = weigh(schedule.snr(t))    # (batch,)
    """
    functions = {"none": no_weight, "p2": p2_weight, "min-snr": min_snr_weight}
    if name not in functions:
        raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {name!r}")
    if name == "none" and options:
        raise ValueError(f"loss_weighting 'none' takes no options, got {sorted(options)}")
    weigh = partial(functions[name], **options)
    weigh(torch.ones(1))  # unknown or out-of-range options fail here, at construction, not mid-training
    return weigh
