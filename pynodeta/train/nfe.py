"""Function-evaluation counts of a model's ODE blocks, read after forward and after backward."""

from __future__ import annotations

from torch import nn

from ..ode.stats import find_ode_blocks

__all__ = ["ode_solvers", "forward_nfe", "backward_nfe"]


def ode_solvers(model: nn.Module) -> list[nn.Module]:
    """Every ODE block of ``model`` (itself included): ``pynodeta.ode.SolvesODE``, whose ``last_stats``
    is None before the first solve."""
    return find_ode_blocks(model)


def forward_nfe(blocks: list[nn.Module]) -> int:
    """Right-hand-side evaluations of the last forward solve, summed over ``blocks``."""
    return sum(b.last_stats.nfe for b in blocks if b.last_stats is not None)


def backward_nfe(blocks: list[nn.Module]) -> int:
    """Evaluations of the last adjoint (backward) solve, summed over ``blocks``.

    0 for blocks trained by backpropagation through the solver: they have no backward solve.
    """
    return sum(b.last_stats.nfe_adjoint for b in blocks if b.last_stats is not None)
