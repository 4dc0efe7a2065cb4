"""Reference ODE problems, shared by the tests and the benchmarks (closed forms where they exist).

Every right-hand side works on a single state ``(..., dim)`` and on a batch of them.
"""

from __future__ import annotations

import torch


def linear_decay(t, y):
    """dy/dt = -y cos(t): y(t) = y0 exp(-sin t), non-autonomous so time handling is exercised."""
    return -y * torch.cos(t)


def linear_decay_exact(y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return y0 * torch.exp(-torch.sin(t)).reshape(-1, *([1] * y0.ndim))


def rational(t, y):
    """dy/dt = -2 t y^2: y(t) = 1 / (t^2 + 1/y0); nonlinear and non-autonomous, with no error cancellation."""
    return -2 * t * y**2


def rational_exact(y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 1 / (t.reshape(-1, *([1] * y0.ndim)) ** 2 + 1 / y0)


class MatrixSystem(torch.nn.Module):
    """dy/dt = A y with a fixed stable, rotating A: y(t) = expm(A t) y0."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.A = torch.nn.Parameter(torch.tensor([[-0.1, 1.0, 0.0], [-1.0, -0.1, 0.3], [0.0, -0.3, -0.5]], dtype=dtype))

    def forward(self, t, y):
        return y @ self.A.T

    def exact(self, y0, t):
        return torch.stack([y0 @ torch.linalg.matrix_exp(self.A.detach() * ti).T for ti in t])


def van_der_pol(mu: float = 1.0):
    """x'' = mu (1 - x^2) x' - x as a first-order system in (x, x'); stiff for large mu."""

    def f(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x**2) * v - x], dim=-1)

    return f


def lotka_volterra(t, y):
    """x' = 1.5 x - x p, p' = x p - 3 p (the classic textbook parameters)."""
    x, p = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * p, -3.0 * p + x * p], dim=-1)


class MLPField(torch.nn.Module):
    """A small neural vector field f(t, y) = MLP([y, t]) with weights scaled so the dynamics are non-trivial."""

    def __init__(self, dim: int = 2, hidden: int = 16, scale: float = 2.0, seed: int = 0, dtype=torch.float32):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, dim))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * scale / p.shape[-1] ** 0.5)
        self.to(dtype)

    def forward(self, t, y):
        return self.net(torch.cat([y, t.expand(*y.shape[:-1], 1)], dim=-1))
