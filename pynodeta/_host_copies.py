"""Host tensors copied to a GPU without waiting for it.

``tensor.to("cuda")`` from ordinary (pageable) host memory returns only when the copy is done, and the copy
runs after every kernel queued before it: the host waits for the GPU's whole queue, as it does for a value
read back. From page-locked memory the copy is queued like a kernel and the host runs on; PyTorch's
page-locked allocator keeps the buffer until the copy has happened.
"""

from __future__ import annotations

import torch

__all__ = ["to_device"]


def to_device(host: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``host.to(device)``, queued without a synchronisation when it goes from the CPU to a CUDA device."""
    device = torch.device(device)
    if device.type != "cuda" or host.device.type != "cpu":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
