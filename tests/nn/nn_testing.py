"""Shared test utilities: gradcheck over inputs and parameters; a call repeated in backward, as an adjoint does."""

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


class CallAgainInBackward(torch.autograd.Function):
    """Calls the layer once forwards and once more inside backward, as an adjoint solve does."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        ctx.save_for_backward(x)
        return layer(0.0, x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            y = ctx.layer(0.0, x)
            (grad_x,) = torch.autograd.grad(y, x, grad)
        return grad_x, None


def randomised(layer):
    """Give every grid point of a TA-BN layer different statistics and affine parameters, as after training."""
    with torch.no_grad():
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    return layer
