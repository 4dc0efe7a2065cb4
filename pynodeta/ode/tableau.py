"""Butcher tableaus: validated, immutable data. A Runge-Kutta method is a tableau plus a little code."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

__all__ = ["ButcherTableau"]

_TOL = 1e-12


def _nonzero(row: tuple[float, ...]) -> tuple[tuple[int, float], ...]:
    return tuple((j, float(v)) for j, v in enumerate(row) if v != 0)


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta tableau with ``s`` stages.

    Attributes:
        c: stage times as fractions of the step, length s, ``c[0] == 0``.
        a: lower-triangular stage weights; ``a[i]`` has ``i`` entries (``a[0]`` is empty).
        b: solution weights, length s.
        b_err: ``b - b_hat`` (weights of the embedded error estimate), length s, or None for fixed-step
            methods without an error estimate.
    The constructor checks the consistency conditions: every row of ``a`` sums to ``c``,
    ``sum(b) == 1`` and ``sum(b_err) == 0``.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s:
            raise ValueError(f"tableau needs len(c) == len(a) == len(b), got {s}, {len(self.a)}, {len(self.b)}")
        if self.c[0] != 0:
            raise ValueError(f"an explicit tableau has c[0] == 0, got {self.c[0]}")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"row a[{i}] must have {i} entries (explicit method), got {len(row)}")
            if abs(sum(row) - self.c[i]) > _TOL:
                raise ValueError(f"row a[{i}] sums to {sum(row)!r}, not c[{i}] = {self.c[i]!r}")
        if abs(sum(self.b) - 1) > _TOL:
            raise ValueError(f"sum(b) must be 1, got {sum(self.b)!r}")
        if self.b_err is not None:
            if len(self.b_err) != s:
                raise ValueError(f"b_err must have {s} entries, got {len(self.b_err)}")
            if abs(sum(self.b_err)) > _TOL:
                raise ValueError(f"sum(b_err) must be 0, got {sum(self.b_err)!r}")

    @classmethod
    def from_fractions(cls, c, a, b, b_hat=None) -> ButcherTableau:
        """Build from exact rationals (strings like "35/384" or numbers); b_err is computed as b - b_hat exactly."""

        def exact(v) -> Fraction:
            return Fraction(v)

        b_exact = [exact(v) for v in b]
        b_err = None
        if b_hat is not None:
            b_err = tuple(float(bv - exact(bh)) for bv, bh in zip(b_exact, b_hat))
        return cls(
            c=tuple(float(exact(v)) for v in c),
            a=tuple(tuple(float(exact(v)) for v in row) for row in a),
            b=tuple(float(v) for v in b_exact),
            b_err=b_err,
        )

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def fsal(self) -> bool:
        """First-same-as-last: the last stage is f(t1, y1), so it is the next step's first stage."""
        return self.c[-1] == 1 and self.b[-1] == 0 and all(
            abs(x - y) <= _TOL for x, y in zip(self.a[-1], self.b[:-1])
        )

    # Sparse views used by the stepping loop so that zero weights cost nothing.
    @property
    def a_nonzero(self) -> tuple[tuple[tuple[int, float], ...], ...]:
        return tuple(_nonzero(row) for row in self.a)

    @property
    def b_nonzero(self) -> tuple[tuple[int, float], ...]:
        return _nonzero(self.b)

    @property
    def b_err_nonzero(self) -> tuple[tuple[int, float], ...]:
        return _nonzero(self.b_err or ())
