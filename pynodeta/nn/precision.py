"""Float32 islands inside mixed precision: what NVlabs/edm2 keeps in float32 while the network runs in
half precision, kept there under ``torch.autocast`` too.

Autocast decides an op's dtype from the op (matmuls and convolutions in bf16/fp16, a few reductions in
float32), not from its inputs: a float32 matmul inside an autocast region still runs in bf16. A region
that must stay float32 (EDM2's noise embedding and uncertainty head) therefore switches autocast off.
"""

from __future__ import annotations

import torch

__all__ = ["autocast_off", "at_least_float32"]


def autocast_off(like: torch.Tensor) -> torch.autocast:
    """``with autocast_off(x):`` ops run in their inputs' dtypes, even inside an enclosing autocast region
    (on x's device type)."""
    return torch.autocast(like.device.type, enabled=False)


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/float32, float64 stays float64: the dtype a float32 island computes in."""
    return torch.promote_types(dtype, torch.float32)
