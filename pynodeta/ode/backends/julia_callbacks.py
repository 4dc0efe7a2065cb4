"""The Python functions that Julia calls during a ``backend="julia"`` solve.

Julia owns the buffers: each callable receives Julia arrays (juliacall wrappers, viewed without a copy
by ``np.asarray``, column-major for matrices) and writes its result into them in place:

- ``JuliaCallback``: ``f(du, u, t)``, the right-hand side;
- ``JuliaJacobian``: ``jac(J, u, t)``, ``J = d func / d y`` from ``torch.func.jacrev``;
- ``JuliaJVP``: ``jvp(Jv, v, u, t)``, ``Jv = (d func / d y) v`` from ``torch.func.jvp`` (forward mode,
  one evaluation), for Newton-Krylov linear solvers.

With torch's Jacobians the stiff methods cost one evaluation per Jacobian instead of ``n + 1`` (finite
differences), which matters for the adjoint, whose state has ``2n + n_params`` elements. Where ``func``
cannot be transformed by ``torch.func`` (the adjoint's augmented system calls ``torch.autograd.grad``
inside), both fall back to forward differences through the counted right-hand side.
"""

from __future__ import annotations

import numpy as np
import torch

from .external import CountingRHS
from .scipy import AutogradJacobian

__all__ = ["JuliaCallback", "JuliaJacobian", "JuliaJVP", "raise_callback_error"]

# torch.func's message when func uses autograd inside the transform.
_TRANSFORM_UNSUPPORTED = ("functorch", "torch.func")


class JuliaCallback:
    """The right-hand side Julia calls as ``f(du, u, t)``: writes dy/dt into Julia's ``du`` in place.

    The first exception raised here is kept, so that the caller can re-raise it unwrapped.
    """

    def __init__(self, rhs: CountingRHS):
        self.rhs = rhs
        self.error: BaseException | None = None

    def __call__(self, du, u, t) -> None:
        try:
            self.rhs.evaluate_into(np.asarray(du), np.asarray(u), float(t))
        except BaseException as err:
            self.error = self.error or err
            raise


class JuliaJacobian:
    """``jac(J, u, t)``: writes ``d func / d y`` at ``(t, u)`` into Julia's ``(size, size)`` matrix ``J``.

    The matrix comes from scipy's backend's ``AutogradJacobian`` (``torch.func.jacrev``, forward
    differences as the fallback), so both backends form Jacobians the same way.
    """

    def __init__(self, rhs: CountingRHS):
        self.jacobian = AutogradJacobian(rhs)

    def __call__(self, J, u, t) -> None:
        np.asarray(J)[...] = self.jacobian(float(t), np.asarray(u))


class JuliaJVP:
    """``jvp(Jv, v, u, t)``: writes ``(d func / d y) v`` at ``(t, u)`` into Julia's vector ``Jv``."""

    def __init__(self, rhs: CountingRHS):
        self.rhs = rhs
        self.use_autograd = True

    def __call__(self, Jv, v, u, t) -> None:
        np.asarray(Jv)[...] = self.product(np.asarray(v), np.asarray(u), float(t))

    def product(self, v: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
        """``(d func / d y) v`` on the flat state, numpy ``(size,)``."""
        if self.use_autograd:
            try:
                return self._forward_mode(v, y, t)
            except RuntimeError as err:
                if not any(name in str(err) for name in _TRANSFORM_UNSUPPORTED):
                    raise
                self.use_autograd = False
        return self._forward_difference(v, y, t)

    def _forward_mode(self, v: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
        self.rhs.stats.nfe += 1
        self.rhs.stats.t_evaluated.append(float(t))
        t_tensor, y_tensor = self.rhs.tensor_args(t, y)
        direction = torch.from_numpy(np.asarray(v)).to(device=y_tensor.device, dtype=y_tensor.dtype)
        shape = self.rhs.state.shape

        def flat_func(y_flat: torch.Tensor) -> torch.Tensor:
            return self.rhs.func(t_tensor, y_flat.reshape(shape)).reshape(-1)

        _, product = torch.func.jvp(flat_func, (y_tensor.reshape(-1).detach(),), (direction.reshape(-1),))
        return product.detach().cpu().numpy()

    def _forward_difference(self, v: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
        norm_v = float(np.linalg.norm(v))
        if norm_v == 0.0:
            return np.zeros_like(y)
        # Step sqrt(eps) (1 + |y|) / |v|: truncation and rounding errors balanced along v, the usual
        # choice of Jacobian-free Newton-Krylov methods (Knoll & Keyes 2004, J. Comput. Phys. 193).
        h = np.sqrt(np.finfo(self.rhs.state.solver_dtype).eps) * (1.0 + float(np.linalg.norm(y))) / norm_v
        f0 = self.rhs(t, y)
        return (self.rhs(t, y + h * v) - f0) / h


def raise_callback_error(callback_error: BaseException | None, err: Exception) -> None:
    """Re-raise the exception of a Python callback that made the Julia solve fail (call in ``except``).

    PythonCall hands such an exception back to Python as the same object (``err is callback_error``);
    then it must propagate as it is (the caller's bare ``raise``), since ``raise e from e`` would make
    it its own ``__cause__``. If it arrives wrapped in a Julia error instead, the original is raised
    from the wrapper.
    """
    if callback_error is not None and callback_error is not err:
        raise callback_error from err
