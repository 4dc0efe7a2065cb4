"""Random draws that accept a generator on any device.

``torch.randn(..., generator=g, device=d)`` refuses a CPU generator with a CUDA ``d``. Drawing on the
generator's device and then moving the result lets one seeded CPU generator drive CPU and GPU runs
alike (the same seed gives the same noise on both). The move to a GPU is queued without waiting for it.
"""

from __future__ import annotations

import torch

from ._host_copies import to_device

__all__ = ["randn"]


def randn(shape, *, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn from ``generator`` wherever that lives."""
    if generator is None or generator.device == torch.device(device):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return to_device(torch.randn(shape, generator=generator, dtype=dtype, device=generator.device), device)
