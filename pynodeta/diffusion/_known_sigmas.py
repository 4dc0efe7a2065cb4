"""Noise levels whose values the host already knows, so that checking them reads nothing back from a GPU.

A sampler steps through noise levels it holds as Python floats, but a denoiser receives them as a (batch,)
tensor on x's device, and its checks (σ > 0, σ inside a schedule's range) would read that tensor back: on a
GPU, one synchronisation per check, per call, which stops the host from queueing the next call's kernels
while the GPU runs this one. A tensor made here from a host float carries its bounds, so those checks read
them instead. The bounds belong to one tensor object at one version: a view, a new tensor or an in-place
change (which bumps ``_version``) falls back to reading the values, so a check can never trust a stale bound.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _host_copies

# the attribute a tensor made here carries: (its _version when made, lowest value, highest value); an attribute,
# not a table keyed by the tensor, because it costs a tenth as much per denoiser call
_BOUNDS = "_pynodeta_sigma_bounds"
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _rounded(value: float, dtype: torch.dtype) -> float:
    """``value`` as a tensor of ``dtype`` holds it (on the host: numpy for float32, a few times cheaper per call
    than a torch scalar)."""
    if dtype is torch.float64:
        return float(value)
    if dtype is torch.float32 and abs(value) < _FLOAT32_MAX:  # beyond it numpy warns where torch gives inf
        return float(np.float32(value))
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


def _remember(tensor: torch.Tensor, low: float, high: float) -> torch.Tensor:
    setattr(tensor, _BOUNDS, (tensor._version, low, high))
    return tensor


def known_bounds(tensor: torch.Tensor) -> tuple[float, float] | None:
    entry = getattr(tensor, _BOUNDS, None)
    if entry is None or entry[0] != tensor._version:
        return None
    return entry[1], entry[2]


def sigma_levels(value: float, x: torch.Tensor) -> torch.Tensor:
    """σ = ``value`` for each sample: a (batch,) tensor of x's dtype and device whose bounds are known where
    reading them back would wait for the device (on the CPU a read is cheaper than carrying them)."""
    sigmas = torch.full((x.shape[0],), float(value), dtype=x.dtype, device=x.device)
    if not _host_copies.reads_wait_for(x):
        return sigmas
    rounded = _rounded(value, x.dtype)
    return _remember(sigmas, rounded, rounded)


def as_levels(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``torch.as_tensor(sigma, dtype=x.dtype, device=x.device)``, keeping known bounds through the cast
    (rounding is monotone, so the rounded bounds bound the rounded values)."""
    levels = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if isinstance(sigma, torch.Tensor) and levels is not sigma:
        known = known_bounds(sigma)
        if known is not None:
            _remember(levels, _rounded(known[0], x.dtype), _rounded(known[1], x.dtype))
    return levels


def same_levels(source: torch.Tensor, derived: torch.Tensor) -> torch.Tensor:
    """``derived``, which holds only values of ``source`` (an expand, a concatenation of copies), inherits its
    known bounds."""
    known = known_bounds(source)
    if known is not None:
        _remember(derived, *known)
    return derived


def sigma_bounds(sigma: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a non-empty tensor of noise levels: the known bounds, else read back (free on the CPU).
    A NaN level reads back as NaN: write range tests so that NaN fails them (``not low > 0``)."""
    known = known_bounds(sigma)
    if known is not None:
        return known
    return float(sigma.min()), float(sigma.max())
