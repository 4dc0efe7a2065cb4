"""Random draws that accept a generator on any device.

``torch.randn(..., generator=g, device=d)`` refuses a CPU generator with a CUDA ``d``. Drawing on the
generator's device and then moving the result lets one seeded CPU generator drive CPU and GPU runs
alike (the same seed gives the same noise on both). The move to a GPU is queued without waiting for it.
"""

from __future__ import annotations

import torch

from ._host_copies import to_device

__all__ = ["check_generator", "randn"]


def check_generator(generator: torch.Generator | None, name: str = "generator") -> torch.Generator | None:
    """``generator`` when it is a torch.Generator or None; a TypeError naming ``name`` otherwise (a seed or a
    string would fail only at the first draw, with an error about its missing ``device``)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__} {generator!r}; "
                        "for a seed s pass torch.Generator().manual_seed(s)")
    return generator


def randn(shape, *, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn from ``generator`` wherever that lives."""
    check_generator(generator)  # every draw's caller (the training losses too) gets the named error, not .device's
    if generator is None or generator.device == torch.device(device):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return to_device(torch.randn(shape, generator=generator, dtype=dtype, device=generator.device), device)
