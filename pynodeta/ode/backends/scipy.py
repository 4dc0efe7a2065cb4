"""``backend="scipy"``: SciPy's ``solve_ivp`` solvers (RK45, RK23, DOP853, Radau, BDF, LSODA).

Useful for stiff problems (Radau, BDF, LSODA) and for float64 reference solutions. The solvers are
driven step by step, exactly as ``scipy.integrate.solve_ivp`` drives them, so that the output times
come from each step's dense output (as ``solve_ivp(t_eval=...)`` does) while pynodeta keeps what
``solve_ivp`` hides: every step size, the step limit with the partial solution, and the time at which
a step failed.

Semantics that differ from the torch backend, on purpose and documented:
- The state is integrated in float64 whatever y0's dtype; results are cast back to it.
- Error control uses SciPy's controller and RMS norm over the whole state; a ``StateNorm`` from the
  adjoint is accepted and not used (SciPy cannot take a custom norm).
- ``max_num_steps`` bounds attempted steps for the explicit Runge-Kutta methods; for radau, bdf and
  lsoda, where SciPy does not expose rejected steps, it bounds accepted steps, and ``n_rejected`` is 0.
  The limit is checked after each accepted step.
- ``min_step`` is available with lsoda only (SciPy's other solvers have no such option).
- Implicit methods get their Jacobian from torch autograd (``torch.func.jacrev``), not from finite
  differences. Where ``func`` cannot be transformed by ``torch.func`` (the adjoint's augmented system
  calls ``torch.autograd.grad`` inside), the Jacobian is formed by forward differences instead.
  Calls made for Jacobians count in ``nfe`` and ``t_evaluated``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import integrate

from ..stats import SolveStats
from .base import RHS, Backend, SolverConfig
from .external import CountingRHS, ExternalOutcome, FlatState, check_config, output_times, tolerance_to_numpy

__all__ = ["ScipyBackend", "SCIPY_METHODS"]

# pynodeta method name -> SciPy solver class; torchdiffeq's names are aliases of the same tableaus.
SCIPY_METHODS = {
    "rk45": integrate.RK45,
    "dopri5": integrate.RK45,
    "rk23": integrate.RK23,
    "bosh3": integrate.RK23,
    "dop853": integrate.DOP853,
    "radau": integrate.Radau,
    "bdf": integrate.BDF,
    "lsoda": integrate.LSODA,
}
_IMPLICIT = {"radau", "bdf", "lsoda"}
_EXTRA_OPTIONS = {"jacobian"}  # "autograd" (default) or "finite-difference" (SciPy's own)


class ScipyBackend(Backend):
    """Integrates with ``scipy.integrate`` solvers on the host, in float64."""

    name = "scipy"
    differentiable = False

    def methods(self) -> Sequence[str]:
        return tuple(SCIPY_METHODS)

    def integrate(
        self, func: RHS, y0: torch.Tensor, t: torch.Tensor, config: SolverConfig, stats: SolveStats
    ) -> torch.Tensor:
        """Solve from ``y0`` at ``t[0]``; returns ``(len(t), *y0.shape)`` in y0's dtype and device."""
        check_config(config, self.name, SCIPY_METHODS)
        _check_scipy_options(config)
        stats.backend, stats.method = self.name, config.method
        state = FlatState.of(y0)
        if len(t) == 1:
            return y0.detach().unsqueeze(0).clone()
        rhs = CountingRHS(func, state, stats)
        times = output_times(t)
        solver = _make_solver(rhs, state.to_numpy(y0), times, config)
        return _step_through(solver, times, config, stats).result(state, t, config, stats)


def _check_scipy_options(config: SolverConfig) -> None:
    unknown = set(config.extra) - _EXTRA_OPTIONS
    if unknown:
        raise ValueError(
            f"unknown options {sorted(unknown)} for backend 'scipy'; it accepts {sorted(_EXTRA_OPTIONS)}"
        )
    jacobian = config.extra.get("jacobian", "autograd")
    if jacobian not in ("autograd", "finite-difference"):
        raise ValueError(f"jacobian must be 'autograd' or 'finite-difference', got {jacobian!r}")
    if config.min_step > 0 and config.method != "lsoda":
        raise ValueError(
            f"min_step is supported by backend 'scipy' with method 'lsoda' only, not {config.method!r}; "
            "use method='lsoda', or backend='torch' / 'julia'"
        )


def _make_solver(rhs: CountingRHS, y0: np.ndarray, times: np.ndarray, config: SolverConfig):
    size = y0.size
    options = dict(
        rtol=tolerance_to_numpy(config.rtol, size, "rtol"),
        atol=tolerance_to_numpy(config.atol, size, "atol"),
        max_step=config.max_step,
    )
    # SciPy raises tolerances below 100 * eps with only a warning; refuse instead of changing them.
    if np.min(options["rtol"]) < 100 * np.finfo(np.float64).eps:
        raise ValueError(f"rtol must be >= {100 * np.finfo(np.float64).eps:.3g} with backend 'scipy'")
    if config.first_step is not None:
        span = abs(float(times[-1] - times[0]))
        if config.first_step > span:
            raise ValueError(f"first_step={config.first_step:.6g} is larger than the integration span "
                             f"|t[-1] - t[0]| = {span:.6g}; choose first_step <= {span:.6g} or leave it None")
        options["first_step"] = config.first_step
    if config.min_step > 0:
        options["min_step"] = config.min_step
    if config.method in _IMPLICIT and config.extra.get("jacobian", "autograd") == "autograd":
        options["jac"] = AutogradJacobian(rhs)
    solver_class = SCIPY_METHODS[config.method]
    return solver_class(rhs, float(times[0]), y0.astype(np.float64), float(times[-1]), **options)


def _step_through(solver, times: np.ndarray, config: SolverConfig, stats: SolveStats) -> ExternalOutcome:
    """Advance ``solver`` to ``times[-1]``, outputs from each step's dense output (solve_ivp's loop)."""
    direction = np.sign(times[-1] - times[0])
    ys = [solver.y.copy()]
    stages = getattr(solver, "n_stages", None) if config.method not in _IMPLICIT else None
    while solver.status == "running":
        nfev_before = solver.nfev
        message = solver.step()
        if solver.status == "failed":
            underflow = "step size" in (message or "").lower()
            return ExternalOutcome(np.array(ys), "step_underflow" if underflow else "failure",
                                   float(solver.t), float(solver.step_size or 0.0), message or "")
        # Explicit RK: every attempt costs exactly n_stages evaluations, so rejections are visible.
        attempts = (solver.nfev - nfev_before) // stages if stages else 1
        _record_step(stats, solver, attempts)
        n_done = len(ys)
        reached = times[n_done:][direction * (times[n_done:] - solver.t) <= 0]
        if len(reached):
            dense = solver.dense_output()
            ys.extend(solver.y.copy() if tk == solver.t else dense(tk) for tk in reached)
        if solver.status == "running" and stats.n_steps >= config.max_num_steps:
            return ExternalOutcome(np.array(ys), "max_steps", float(solver.t))
    return ExternalOutcome(np.array(ys), "success", float(solver.t))


def _record_step(stats: SolveStats, solver, attempts: int) -> None:
    stats.n_steps += max(attempts, 1)
    stats.n_accepted += 1
    stats.n_rejected += max(attempts, 1) - 1
    stats.step_sizes.append(abs(float(solver.t - solver.t_old)))


class AutogradJacobian:
    """``d func / d y`` on the flat state, for SciPy's implicit solvers: ``(t, y) -> (size, size)``.

    Uses ``torch.func.jacrev`` (one forward and a vectorised backward). If ``func`` cannot be transformed
    by ``torch.func`` the Jacobian is formed by forward differences through the counted RHS, for the
    rest of the solve.
    """

    def __init__(self, rhs: CountingRHS):
        self.rhs = rhs
        self.use_autograd = True

    def __call__(self, t: float, y: np.ndarray) -> np.ndarray:
        if self.use_autograd:
            try:
                return self._autograd(t, y)
            except RuntimeError as err:
                if "functorch" not in str(err) and "torch.func" not in str(err):
                    raise
                self.use_autograd = False
        return self._forward_differences(t, y)

    def _autograd(self, t: float, y: np.ndarray) -> np.ndarray:
        self.rhs.stats.nfe += 1
        self.rhs.stats.t_evaluated.append(float(t))
        t_tensor, y_tensor = self.rhs.tensor_args(t, y)
        shape = self.rhs.state.shape

        def flat_func(y_flat: torch.Tensor) -> torch.Tensor:
            return self.rhs.func(t_tensor, y_flat.reshape(shape)).reshape(-1)

        jacobian = torch.func.jacrev(flat_func)(y_tensor.reshape(-1).detach())
        return jacobian.detach().cpu().to(torch.float64).numpy()

    def _forward_differences(self, t: float, y: np.ndarray) -> np.ndarray:
        f0 = self.rhs(t, y).astype(np.float64)
        jacobian = np.empty((y.size, y.size))
        for j in range(y.size):
            # Step sqrt(eps) relative to the element: the usual balance of truncation and rounding error.
            h = np.sqrt(np.finfo(np.float64).eps) * max(1.0, abs(y[j]))
            shifted = y.copy()
            shifted[j] += h
            jacobian[:, j] = (self.rhs(t, shifted) - f0) / h
        return jacobian
