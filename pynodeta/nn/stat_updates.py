"""When may normalisation layers update their running statistics? Scoped, explicit controls.

Two situations freeze the running statistics of pynodeta's batch norms (``TABatchNorm*``,
``PopTIBatchNorm*``) while they still normalise with batch statistics in train mode:

* inside ``with no_stat_updates():`` — always (e.g. an extra evaluation you do not want counted);
* during an autograd backward pass — unless the layer was built with
  ``update_stats_in_backward=True``. An adjoint solver calls the right-hand side again while it
  integrates backwards inside ``autograd.Function.backward`` (pynodeta's adjoint, which also says
  so through ``pynodeta.ode.is_adjoint_backward()``, and torchdiffeq's alike), as does activation
  checkpointing; those calls revisit the forward times, so by default they are not counted twice.
  A solver that runs its backward solve outside autograd can say so with ``with backward_solve():``
  (``pynodeta.ode.backward_solve``, re-exported here).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

from ..ode import backward_solve, is_adjoint_backward

__all__ = ["no_stat_updates", "backward_solve", "stat_updates_allowed"]

_frozen: contextvars.ContextVar[bool] = contextvars.ContextVar("pynodeta_no_stat_updates", default=False)


@contextlib.contextmanager
def no_stat_updates() -> Iterator[None]:
    """No running-statistics update inside the block (this thread/async context only)."""
    token = _frozen.set(True)
    try:
        yield
    finally:
        _frozen.reset(token)


def in_backward_solve() -> bool:
    """True inside ``backward_solve()`` (pynodeta's adjoint backward solve uses it), or while autograd
    runs any backward pass (torchdiffeq's adjoint, activation checkpointing)."""
    # torch reports the id of the running backward graph task, -1 outside backward.
    return is_adjoint_backward() or torch._C._current_graph_task_id() != -1


def stat_updates_allowed(update_stats_in_backward: bool) -> bool:
    """Whether a train-mode norm with this option may update its running statistics now."""
    if _frozen.get():
        return False
    return update_stats_in_backward or not in_backward_solve()
