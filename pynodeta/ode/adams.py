"""torchdiffeq's fixed-grid Adams methods: "explicit_adams" (Adams-Bashforth) and "implicit_adams"
(Adams-Bashforth predictor, Adams-Moulton corrector by functional iteration; "fixed_adams" is its old name).

As torchdiffeq 0.2.5: the first two steps are rk4 (3/8 rule) steps that fill the history of f, then
the order grows with the history up to max_order - 1 past values (max_order for the corrector, 12 by
default); the corrector's convergence test and iteration limit are torchdiffeq's (``_adams_step``).
The weights assume equal steps, as torchdiffeq's do. They are computed exactly (Fractions) from their defining property,
``sum_j w_j p(u_j) = int_0^1 p(u) du`` for every polynomial p of degree < k at the nodes u_j
(Hairer, Norsett & Wanner I, III.1).
"""

from __future__ import annotations

import collections
import functools
import warnings
from fractions import Fraction

import torch

__all__ = ["ADAMS_METHODS", "adams_weights", "integrate_adams"]

ADAMS_METHODS = {"explicit_adams": False, "implicit_adams": True, "fixed_adams": True}  # name -> implicit
_MIN_HISTORY = 3  # below this many past f values, take an rk4 step (torchdiffeq's _MIN_ORDER - 1)


@functools.cache
def adams_weights(k: int, implicit: bool) -> tuple[float, ...]:
    """Weights of f at the nodes u = 0, -1, ..., -(k-1) (Bashforth) or u = 1, 0, ..., -(k-2) (Moulton)."""
    nodes = [Fraction(1 - j) if implicit else Fraction(-j) for j in range(k)]
    # Solve the Vandermonde system  sum_j w_j u_j^m = 1 / (m + 1),  m = 0 .. k-1, exactly.
    rows = [[u**m for u in nodes] + [Fraction(1, m + 1)] for m in range(k)]
    for col in range(k):
        pivot = next(r for r in range(col, k) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(k):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col])]
    return tuple(float(rows[j][k] / rows[j][j]) for j in range(k))


def _rk4_38(call, s, y, f0, dt, h, perturb):
    k2 = call(s + dt / 3, y.add(f0, alpha=h / 3))
    k3 = call(s + 2 * dt / 3, y.add(f0, alpha=-h / 3).add_(k2, alpha=h))
    y4 = y.add(f0, alpha=h).add_(k2, alpha=-h).add_(k3, alpha=h)
    k4 = call.just_before(s + dt, y4) if perturb else call(s + dt, y4)
    return y.add(f0, alpha=h / 8).add_(k2, alpha=3 * h / 8).add_(k3, alpha=3 * h / 8).add_(k4, alpha=h / 8)


def _converged(old: torch.Tensor, new: torch.Tensor, rtol, atol) -> bool:
    """torchdiffeq's corrector test on two successive increments dy: the max norm of their difference
    scaled by atol + rtol * max(|dy_old|, |dy_new|) is below 1."""
    tol = atol + rtol * torch.maximum(old.abs(), new.abs())
    return bool(((old - new).abs() / tol).max() < 1)


def _weighted_sum(values, weights, h: float) -> torch.Tensor:
    """h * sum_j w_j values_j, as torchdiffeq forms its Adams increments (the increment, not y + it)."""
    total = torch.mul(values[0], h * weights[0])
    for w, value in zip(weights[1:], list(values)[1:]):
        total.add_(value, alpha=h * w)
    return total


def _adams_step(call, history, s, y, dt, h, implicit, config):
    """y1 after one step from (s, y); history holds f at the previous grid points, newest first.

    As torchdiffeq 0.2.5: the predictor's increment dy is corrected by functional iteration until two
    successive increments pass ``_converged`` at the solve's rtol/atol, at most ``max_iters`` times; when
    they never do, a warning is given and the oldest f is dropped, so the next steps run at a lower order.
    """
    order = min(len(history), config.max_order - 1)
    if order < _MIN_HISTORY:
        return _rk4_38(call, s, y, history[0], dt, h, config.perturb)
    dy = _weighted_sum(history, adams_weights(order, False), h)
    if not implicit:
        return y + dy
    moulton = adams_weights(order + 1, True)
    known = _weighted_sum(history, moulton[1:], h)
    for _ in range(config.max_iters):
        y1 = y + dy
        f1 = call.just_before(s + dt, y1) if config.perturb else call(s + dt, y1)
        previous, dy = dy, known.add(f1, alpha=h * moulton[0])
        if _converged(previous, dy, config.rtol, config.atol):
            return y + dy
    warnings.warn("implicit_adams: the corrector's functional iteration did not converge; the solution may be "
                  "inaccurate (use a smaller step_size, or raise options['max_iters'])", stacklevel=6)
    history.pop()
    return y + dy


def integrate_adams(name, call, y0, out_s, grid, config, stats) -> list[torch.Tensor]:
    """Step along ``grid`` (solver times) and return the states at ``out_s``, interpolated as configured."""
    implicit = ADAMS_METHODS[name]
    if config.max_order < _MIN_HISTORY + 1:
        warnings.warn(f"{name}: max_order={config.max_order} is below {_MIN_HISTORY + 1}, so every step is an rk4 "
                      "step (as torchdiffeq)", stacklevel=5)
    history = collections.deque(maxlen=config.max_order - 1)
    outputs, next_out = [y0], 1
    direction, y = call.direction, y0
    for s, s1 in zip(grid[:-1], grid[1:]):
        dt = s1 - s
        h = direction * dt
        if config.callbacks is not None:
            config.callbacks.on_step(direction * s, y, dt)
        f0 = call.just_after(s, y) if config.perturb else call(s, y)
        history.appendleft(f0)
        y1 = _adams_step(call, history, s, y, dt, h, implicit, config)
        f1 = None
        while next_out < len(out_s) and out_s[next_out] <= s1:
            theta = (out_s[next_out] - s) / dt
            if theta == 1.0:
                outputs.append(y1)
            elif config.interpolation == "cubic":  # Hermite through y, y1, f0, f1
                f1 = call(s1, y1) if f1 is None else f1
                h00, h01 = (1 + 2 * theta) * (1 - theta) ** 2, theta * theta * (3 - 2 * theta)
                h10, h11 = theta * (1 - theta) ** 2, theta * theta * (theta - 1)
                outputs.append(y.mul(h00).add_(y1, alpha=h01).add_(f0, alpha=h * h10).add_(f1, alpha=h * h11))
            else:
                outputs.append(torch.lerp(y, y1, theta))
            next_out += 1
        stats.step_sizes.append(dt)
        stats.n_steps += 1
        stats.n_accepted += 1
        y = y1
    stats.nfe = len(stats.t_evaluated)
    return outputs
