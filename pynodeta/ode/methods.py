"""The Runge-Kutta methods of the native backend: a tableau, an order and a dense-output rule each.

Adding a method is adding an entry to ``METHODS`` (and the parametrised tests pick it up).
Dense output is expressed as weights over the step's stages, ``y(t0 + theta*dt) = y0 + dt * sum_i w_i(theta) k_i``,
so evaluating it is the same fused combination as taking a step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .extra_tableaus import DOPRI8, DOPRI8_MID, FEHLBERG2, HEUN2, HEUN3, quartic_weights
from .tableau import ButcherTableau

__all__ = ["Method", "METHODS", "ADAPTIVE_METHODS", "FIXED_GRID_METHODS"]

DenseWeights = Callable[[float], tuple[float, ...]]


@dataclass(frozen=True)
class Method:
    """A Runge-Kutta method.

    Attributes:
        name: the name users pass as ``method=``.
        tableau: its Butcher tableau (with ``b_err`` for adaptive methods).
        order: order of the solution.
        error_order: exponent denominator of the step-size controller (order of the embedded pair + 1,
            as torchdiffeq uses it: 5 for dopri5).
        dense: ``theta -> weights`` over the stages (plus f(t1, y1) appended for non-FSAL methods
            when ``dense_needs_f1``), or None for linear interpolation between steps.
        dense_needs_f1: whether ``dense`` weights include f(t1, y1) as an extra last entry.
        dense_order: order of accuracy of the dense output.
    """

    name: str
    tableau: ButcherTableau
    order: int
    error_order: int = 0
    dense: DenseWeights | None = None
    dense_needs_f1: bool = False
    dense_order: int = 1

    @property
    def adaptive(self) -> bool:
        return self.tableau.b_err is not None

    @classmethod
    def from_tableau(
        cls,
        tableau: ButcherTableau,
        *,
        order: int,
        name: str = "custom",
        error_order: int | None = None,
        dense: DenseWeights | None = None,
        dense_order: int | None = None,
        dense_needs_f1: bool = False,
    ) -> Method:
        """A method from your own tableau, ready for ``solve(..., method=...)``.

        Args:
            tableau: the Butcher tableau; with ``b_err`` it is adaptive, without it fixed-grid.
            order: order of the solution weights ``b``.
            error_order: the step-size exponent's denominator; default ``order`` (torchdiffeq's
                convention: the embedded pair's order + 1, so 5 for a 5(4) pair).
            dense: stage weights of the dense output; None: cubic Hermite through y0, y1, f0, f1
                (3rd order; costs one extra evaluation per output step for non-FSAL tableaus).
        """
        if not isinstance(tableau, ButcherTableau):
            raise TypeError(f"tableau must be a ButcherTableau, got {type(tableau).__name__}")
        if not (isinstance(order, int) and order >= 1):
            raise ValueError(f"order must be an int >= 1, got {order!r}")
        error_order = order if error_order is None else error_order
        if not (isinstance(error_order, int) and error_order >= 1):
            raise ValueError(f"error_order must be an int >= 1, got {error_order!r}")
        if tableau.b_err is None:  # fixed grid: outputs come from FixedGrid(interpolation=...)
            return cls(name, tableau, order=order)
        if dense is None:
            dense, dense_needs_f1 = hermite_weights(tableau.b, fsal=tableau.fsal), not tableau.fsal
            dense_order = min(3, order)
        return cls(name, tableau, order=order, error_order=error_order, dense=dense,
                   dense_needs_f1=dense_needs_f1, dense_order=dense_order or 1)


def hermite_weights(b: tuple[float, ...], fsal: bool) -> DenseWeights:
    """Cubic Hermite through y0, y1, f0, f1 (3rd order), written as stage weights.

    y(theta) = y0 + dt * [h01 * sum_i b_i k_i + h10 * f0 + h11 * f1],
    with h01 = theta^2 (3 - 2 theta), h10 = theta (1 - theta)^2, h11 = theta^2 (theta - 1).
    For FSAL methods f1 is the last stage; otherwise it is appended after the stages.
    """

    def weights(theta: float) -> tuple[float, ...]:
        h01 = theta * theta * (3 - 2 * theta)
        h10 = theta * (1 - theta) ** 2
        h11 = theta * theta * (theta - 1)
        w = [h01 * bi for bi in b]
        w[0] += h10
        if fsal:
            w[-1] += h11
        else:
            w.append(h11)
        return tuple(w)

    return weights


def linear_weights(b: tuple[float, ...]) -> DenseWeights:
    """Linear interpolation between y0 and y1 (torchdiffeq's default for fixed-grid methods)."""
    return lambda theta: tuple(theta * bi for bi in b)


# --- Dormand-Prince 5(4) -------------------------------------------------------------------------

DOPRI5 = ButcherTableau.from_fractions(
    c=[0, "1/5", "3/10", "4/5", "8/9", 1, 1],
    a=[
        [],
        ["1/5"],
        ["3/40", "9/40"],
        ["44/45", "-56/15", "32/9"],
        ["19372/6561", "-25360/2187", "64448/6561", "-212/729"],
        ["9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"],
        ["35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84"],
    ],
    b=["35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84", 0],
    b_hat=["1951/21600", 0, "22642/50085", "451/720", "-12231/42400", "649/6300", "1/60"],
)

# Weights of a 4th-order estimate of y(t0 + dt/2) (Shampine 1986), as torchdiffeq uses them.
_DOPRI5_MID = (
    6025192743 / 30085553152 / 2,
    0.0,
    51252292925 / 65400821598 / 2,
    -2691868925 / 45128329728 / 2,
    187940372067 / 1594534317056 / 2,
    -1776094331 / 19743644256 / 2,
    11237099 / 235043384 / 2,
)


def _dopri5_weights(theta: float) -> tuple[float, ...]:
    """torchdiffeq's quartic through y0, y1, y_mid, f0, f1, rewritten as stage weights.

    p(x) = y0 + P1(x) (y1 - y0) + P2(x) (y_mid - y0) + dt P3(x) f0 + dt P4(x) f1 with
    P1 = -5x^2 + 14x^3 - 8x^4, P2 = 16x^2 - 32x^3 + 16x^4, P3 = x - 4x^2 + 5x^3 - 2x^4,
    P4 = x^2 - 3x^3 + 2x^4 (expand torchdiffeq's ``_interp_fit`` coefficients to see it).
    """
    x2 = theta * theta
    x3, x4 = x2 * theta, x2 * x2
    p1 = -5 * x2 + 14 * x3 - 8 * x4
    p2 = 16 * x2 - 32 * x3 + 16 * x4
    w = [p1 * b + p2 * m for b, m in zip(DOPRI5.b, _DOPRI5_MID)]
    w[0] += theta - 4 * x2 + 5 * x3 - 2 * x4
    w[-1] += x2 - 3 * x3 + 2 * x4
    return tuple(w)


# --- Tsitouras 5(4) ------------------------------------------------------------------------------

TSIT5 = ButcherTableau(
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383),
        (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774),
    ),
    b=(0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774,
       0.0),
    b_err=(
        0.09646076681806523 - 0.09468075576583945,
        0.01 - 0.009183565540343254,
        0.4798896504144996 - 0.4877705284247616,
        1.379008574103742 - 1.234297566930479,
        -3.290069515436081 + 2.7077123499835256,
        2.324710524099774 - 1.866628418170587,
        -1 / 66,
    ),
)


def _tsit5_weights(theta: float) -> tuple[float, ...]:
    """Tsitouras' own 4th-order continuous extension b_i(theta) (Tsitouras 2011, as in OrdinaryDiffEq)."""
    t, t2 = theta, theta * theta
    return (
        -1.0530884977290216 * t * (t - 1.3299890189751412) * (t2 - 1.4364028541716351 * t + 0.7139816917074209),
        0.1017 * t2 * (t2 - 2.1966568338249754 * t + 1.2949852507374631),
        2.490627285651252793 * t2 * (t2 - 2.38535645472061657 * t + 1.57803468208092486),
        -16.54810288924490272 * (t - 1.21712927295533244) * (t - 0.61620406037800089) * t2,
        47.37952196281928122 * (t - 1.203071208372362603) * (t - 0.658047292653547382) * t2,
        -34.87065786149660974 * (t - 1.2) * (t - 0.666666666666666667) * t2,
        2.5 * (t - 1) * (t - 0.6) * t2,
    )


# --- Lower-order adaptive pairs ------------------------------------------------------------------

BOSH3 = ButcherTableau.from_fractions(
    c=[0, "1/2", "3/4", 1],
    a=[[], ["1/2"], [0, "3/4"], ["2/9", "1/3", "4/9"]],
    b=["2/9", "1/3", "4/9", 0],
    b_hat=["7/24", "1/4", "1/3", "1/8"],
)

# Heun's method with an Euler error estimate. Not FSAL: f(t1, y1) is a fresh evaluation.
ADAPTIVE_HEUN = ButcherTableau.from_fractions(c=[0, 1], a=[[], [1]], b=["1/2", "1/2"], b_hat=[1, 0])

# --- Fixed-grid methods --------------------------------------------------------------------------

EULER = ButcherTableau.from_fractions(c=[0], a=[[]], b=[1])
MIDPOINT = ButcherTableau.from_fractions(c=[0, "1/2"], a=[[], ["1/2"]], b=[0, 1])
# torchdiffeq's "rk4" is Kutta's 3/8 rule; the classic RK4 is offered as "rk4_classic".
RK4_38 = ButcherTableau.from_fractions(
    c=[0, "1/3", "2/3", 1], a=[[], ["1/3"], ["-1/3", 1], [1, -1, 1]], b=["1/8", "3/8", "3/8", "1/8"]
)
RK4_CLASSIC = ButcherTableau.from_fractions(
    c=[0, "1/2", "1/2", 1], a=[[], ["1/2"], [0, "1/2"], [0, 0, 1]], b=["1/6", "1/3", "1/3", "1/6"]
)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("dopri5", DOPRI5, order=5, error_order=5, dense=_dopri5_weights, dense_order=4),
        Method("tsit5", TSIT5, order=5, error_order=5, dense=_tsit5_weights, dense_order=4),
        Method("bosh3", BOSH3, order=3, error_order=3, dense=hermite_weights(BOSH3.b, fsal=True), dense_order=3),
        Method(
            "adaptive_heun", ADAPTIVE_HEUN, order=2, error_order=2,
            dense=hermite_weights(ADAPTIVE_HEUN.b, fsal=False), dense_needs_f1=True, dense_order=2,
        ),
        # Fixed-grid methods: outputs between grid points are interpolated (options["interpolation"]).
        Method("euler", EULER, order=1),
        Method("midpoint", MIDPOINT, order=2),
        Method("rk4", RK4_38, order=4),
        Method("rk4_classic", RK4_CLASSIC, order=4),
        # torchdiffeq's remaining Runge-Kutta methods (tableaus in extra_tableaus.py)
        Method("dopri8", DOPRI8, order=8, error_order=8, dense=quartic_weights(DOPRI8.b, DOPRI8_MID), dense_order=4),
        Method("fehlberg2", FEHLBERG2, order=2, error_order=2, dense=hermite_weights(FEHLBERG2.b, fsal=False),
               dense_needs_f1=True, dense_order=2),
        Method("heun2", HEUN2, order=2),
        Method("heun3", HEUN3, order=3),
    )
}
ADAPTIVE_METHODS = tuple(name for name, m in METHODS.items() if m.adaptive)
FIXED_GRID_METHODS = tuple(name for name, m in METHODS.items() if not m.adaptive)
