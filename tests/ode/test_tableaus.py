"""Tableaus are validated data; every shipped one satisfies the order conditions of its order."""

from fractions import Fraction

import pytest

from pynodeta.ode import METHODS
from pynodeta.ode.tableau import ButcherTableau


def _order_conditions(tab: ButcherTableau, order: int) -> list[tuple[str, float, float]]:
    """The Runge-Kutta order conditions up to order 4 (Hairer, Norsett & Wanner I, Table II.2.1)."""
    b, c, a = tab.b, tab.c, tab.a
    s = len(b)

    def A(i, j):
        return a[i][j] if j < i else 0.0

    conds = [("sum b", sum(b), 1.0)]
    if order >= 2:
        conds.append(("sum b c", sum(b[i] * c[i] for i in range(s)), 1 / 2))
    if order >= 3:
        conds.append(("sum b c^2", sum(b[i] * c[i] ** 2 for i in range(s)), 1 / 3))
        conds.append(("sum b a c", sum(b[i] * A(i, j) * c[j] for i in range(s) for j in range(s)), 1 / 6))
    if order >= 4:
        conds.append(("sum b c^3", sum(b[i] * c[i] ** 3 for i in range(s)), 1 / 4))
        conds.append(("sum b c a c", sum(b[i] * c[i] * A(i, j) * c[j] for i in range(s) for j in range(s)), 1 / 8))
        conds.append(("sum b a c^2", sum(b[i] * A(i, j) * c[j] ** 2 for i in range(s) for j in range(s)), 1 / 12))
        conds.append(("sum b a a c", sum(b[i] * A(i, j) * A(j, k) * c[k]
                                         for i in range(s) for j in range(s) for k in range(s)), 1 / 24))
    return conds


@pytest.mark.parametrize("name", sorted(METHODS))
def test_order_conditions_hold(name):
    method = METHODS[name]
    for label, value, expected in _order_conditions(method.tableau, min(method.order, 4)):
        assert value == pytest.approx(expected, abs=1e-12), f"{name}: {label}"


@pytest.mark.parametrize("name", sorted(n for n, m in METHODS.items() if m.dense is not None))
def test_dense_output_reproduces_step_end(name):
    method = METHODS[name]
    weights = method.dense(1.0)
    assert weights[: len(method.tableau.b)] == pytest.approx(method.tableau.b, abs=1e-12)
    assert method.dense(0.0) == pytest.approx([0.0] * len(weights), abs=1e-15)


def test_inconsistent_tableau_is_rejected():
    with pytest.raises(ValueError, match=r"row a\[1\] sums to"):
        ButcherTableau(c=(0.0, 0.5), a=((), (0.4,)), b=(0.0, 1.0))
    with pytest.raises(ValueError, match="sum\\(b\\) must be 1"):
        ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.5, 0.4))
    with pytest.raises(ValueError, match="sum\\(b_err\\) must be 0"):
        ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), b_err=(0.1, 0.0))


def test_from_fractions_is_exact():
    tab = ButcherTableau.from_fractions(c=[0, "1/3"], a=[[], ["1/3"]], b=["1/4", "3/4"], b_hat=[1, 0])
    assert tab.b_err == (float(Fraction(1, 4) - 1), 0.75)
