"""Sampling in mixed precision: the network under ``torch.autocast``, the sampler's state in float32.

``AutocastDenoiser(denoiser, "bf16")`` evaluates ``denoiser(x, sigma, ...)`` under autocast and hands the
result back in x's dtype, so that every sampler of ``SAMPLERS`` (and the probability-flow ODE) keeps its
state, its steps and its noise in float32 while the convolutions and matmuls run in bf16 or fp16 — as
NVlabs/edm2's generate_images.py edm_sampler keeps x in float32 around its fp16 network
(``Dx = net(x, t, labels).to(dtype)``, dtype=torch.float32).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SAMPLING_PRECISIONS", "AutocastDenoiser", "autocast_dtype"]

# name -> the autocast dtype (None: no autocast, everything in the data's dtype); Lightning's spellings are
# accepted for the same three choices
SAMPLING_PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}
_ALIASES = {"32-true": "32", "bf16-mixed": "bf16", "16-mixed": "16", "fp16": "16", "float32": "32"}


def autocast_dtype(precision: str, argument: str = "precision") -> torch.dtype | None:
    """The autocast dtype of a sampling precision name ("32", "bf16", "16" or Lightning's "32-true",
    "bf16-mixed", "16-mixed"); None for float32. ValueError naming ``argument`` for any other."""
    name = _ALIASES.get(str(precision), str(precision))
    if name not in SAMPLING_PRECISIONS:
        raise ValueError(f"{argument} must be one of {', '.join(SAMPLING_PRECISIONS)} (float32, bfloat16 or float16 "
                         f"autocast), got {precision!r}")
    return SAMPLING_PRECISIONS[name]


class AutocastDenoiser(nn.Module):
    """``denoiser`` evaluated under ``torch.autocast(x.device.type, dtype)``; D(x, σ) returned in x's dtype.

    ``precision``: a name of :data:`SAMPLING_PRECISIONS` ("32" runs the denoiser as it is). The σ range
    (``sigma_min``, ``sigma_max``) is the wrapped denoiser's.
    """

    def __init__(self, denoiser: nn.Module, precision: str = "bf16"):
        super().__init__()
        self.denoiser, self.precision, self.dtype = denoiser, precision, autocast_dtype(precision)

    @property
    def sigma_min(self) -> float:
        return getattr(self.denoiser, "sigma_min", 0.0)

    @property
    def sigma_max(self) -> float:
        return getattr(self.denoiser, "sigma_max", math.inf)

    def forward(self, x: torch.Tensor, sigma, *args, **kwargs) -> torch.Tensor:
        """x: (batch, ...), sigma and further arguments as the wrapped denoiser's → x̂0 in x's dtype."""
        if self.dtype is None:
            return self.denoiser(x, sigma, *args, **kwargs)
        with torch.autocast(x.device.type, dtype=self.dtype):
            denoised = self.denoiser(x, sigma, *args, **kwargs)
        return denoised.to(x.dtype)

    def extra_repr(self) -> str:
        return f"precision={self.precision!r}"
