"""Values between the host and a GPU without waiting for the GPU.

Reading a value of a GPU tensor back to the host waits for every kernel queued before it. So does
``tensor.to("cuda")`` from ordinary (pageable) host memory: it returns only when the copy is done, and the
copy runs after the queued kernels. From page-locked memory the copy is queued like a kernel and the host
runs on; PyTorch's page-locked allocator keeps the buffer until the copy has happened.
"""

from __future__ import annotations

import torch

__all__ = ["reads_wait_for", "to_device"]


def to_device(host: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``host.to(device)``, queued without a synchronisation when it goes from the CPU to a CUDA device."""
    device = torch.device(device)
    if device.type != "cuda" or host.device.type != "cpu":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def reads_wait_for(tensor: torch.Tensor) -> bool:
    """Whether reading a value of ``tensor`` back to the host waits for the work queued on its device: code
    that checks values per call reads them at once on the CPU and arranges to read less elsewhere.
    (``is_cpu``, not ``.device``: the property builds a device object, which costs several microseconds per
    call between a network's kernels.)"""
    return not tensor.is_cpu
