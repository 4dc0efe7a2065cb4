"""Tiny models and data for the model tests."""

from __future__ import annotations

import torch

from pynodeta.ode import FixedGrid, IController, SolverSettings

# Fixed-step RK4 with two steps over [0, 1]: 8 evaluations, cheap and deterministic.
RK4 = SolverSettings(method="rk4", controller=FixedGrid(step_size=0.5))
RK4_ADJOINT = SolverSettings(method="rk4", controller=FixedGrid(step_size=0.5), adjoint=True)
LOOSE_DOPRI5 = SolverSettings(method="dopri5", controller=IController(rtol=1e-2, atol=1e-2), adjoint=True)

NORMS = ("tabn", "popti-bn", "minibatch-bn", "gn", "none")


def tiny_batch(n: int = 8, shape=(1, 8, 8), classes: int = 4, seed: int = 0):
    """n random images with labels 0..classes-1, a class-dependent mean so the task is learnable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, *shape, generator=g) * 0.5 + y.reshape(-1, *[1] * len(shape)).float() / classes
    return x, y


def train_steps(model, x, y, steps: int = 12, lr: float = 1e-2) -> list[float]:
    """Adam steps on one batch; returns the loss before each step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
