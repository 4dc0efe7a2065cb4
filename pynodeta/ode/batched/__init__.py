"""Per-sample step sizes: ``solve(..., batched=True)`` integrates each row of ``y0`` as its own problem.

Every sample has its own time, step size, accept/reject decisions and statistics; the result of a sample
does not depend on the rest of its batch. The modules: ``times`` (per-sample output times), ``control``
(per-sample error norm, initial step and I/PI rules), ``loop`` (the stepping loop and dense output),
``adjoint`` (per-sample backward steps), ``solve`` (checks and routing), ``stats`` (``BatchedSolveStats``).
"""

from .stats import BatchedSolveStats

__all__ = ["BatchedSolveStats"]
