"""Test helpers: gradcheck a module with respect to its inputs and its parameters together."""

from __future__ import annotations

import torch
from torch.func import functional_call


def gradcheck_module(module: torch.nn.Module, *inputs: torch.Tensor) -> bool:
    """torch.autograd.gradcheck over ``inputs`` and every parameter of ``module`` (all float64)."""
    module = module.double()
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in module.named_parameters()]
    buffers = dict(module.named_buffers())

    def call(*flat):
        args, values = flat[: len(inputs)], flat[len(inputs):]
        return functional_call(module, {**dict(zip(names, values, strict=True)), **buffers}, args)

    return torch.autograd.gradcheck(call, (*inputs, *params), eps=1e-6, atol=1e-5, rtol=1e-4)
