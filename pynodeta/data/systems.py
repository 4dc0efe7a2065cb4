"""Simulated physical systems for trajectory modelling.

Each system is a small immutable object with its vector field dy/dt = f(t, y), the box its random
initial conditions are drawn from, and its conserved quantity where one exists. ``vector_field``
accepts y of shape (state_dim,) or (state_dim, k) (k states at once, scipy's vectorised form).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = ["PhysicalSystem", "DampedMassSpring", "Pendulum", "LotkaVolterra", "DrivenOscillator", "SYSTEMS"]


@dataclass(frozen=True)
class PhysicalSystem:
    """Base class: subclasses set ``state_names`` and ``initial_box`` and define ``vector_field``."""

    state_names = ()  # one name per state coordinate
    initial_box = ()  # ((low, high), ...) per coordinate for random initial conditions

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    def vector_field(self, t: float, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sample_initial_conditions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, state_dim) initial states, uniform in ``initial_box``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        low, high = np.asarray(self.initial_box, dtype=np.float64).T
        return low + (high - low) * rng.random((n, self.state_dim))

    def first_integral(self, y: np.ndarray) -> np.ndarray:
        """The conserved quantity at states y (..., state_dim); only for conservative systems."""
        raise NotImplementedError(f"{type(self).__name__} has no conserved quantity")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def _check_damping(damping: float) -> None:
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0 (0: no friction), got {damping}")


@dataclass(frozen=True)
class DampedMassSpring(PhysicalSystem):
    """m x'' + c x' + k x = 0, state (x, v)."""

    mass: float = 1.0  # m
    stiffness: float = 1.0  # k, spring constant
    damping: float = 0.1  # c, viscous damping (0: energy is conserved)
    state_names = ("x", "v")
    initial_box = ((-1.0, 1.0), (-1.0, 1.0))

    def __post_init__(self):
        _check_positive(mass=self.mass, stiffness=self.stiffness)
        _check_damping(self.damping)

    def matrix(self) -> np.ndarray:
        """A with dy/dt = A y."""
        return np.array([[0.0, 1.0], [-self.stiffness / self.mass, -self.damping / self.mass]])

    def vector_field(self, t, y):
        x, v = y
        return np.stack([v, -(self.stiffness * x + self.damping * v) / self.mass])

    def exact_solution(self, t: np.ndarray, y0: np.ndarray) -> np.ndarray:
        """y(t) = expm(A (t - t0)) y0 with t0 = t[0]; t (m,), y0 (n, 2) -> (n, m, 2)."""
        t = np.asarray(t, dtype=np.float64)
        propagators = np.stack([scipy.linalg.expm(self.matrix() * (s - t[0])) for s in t])  # (m, 2, 2)
        return np.einsum("mij,nj->nmi", propagators, np.asarray(y0, dtype=np.float64))

    def first_integral(self, y):
        if self.damping != 0:
            raise NotImplementedError("a damped mass-spring conserves nothing; set damping=0 for energy")
        return 0.5 * self.mass * y[..., 1] ** 2 + 0.5 * self.stiffness * y[..., 0] ** 2


@dataclass(frozen=True)
class Pendulum(PhysicalSystem):
    """theta'' = -(g / L) sin(theta) - c theta', state (theta, omega)."""

    length: float = 1.0  # L in metres
    gravity: float = 9.81  # g in m/s^2
    damping: float = 0.0  # c in 1/s (0: energy is conserved)
    state_names = ("theta", "omega")
    initial_box = ((-np.pi / 2, np.pi / 2), (-1.0, 1.0))

    def __post_init__(self):
        _check_positive(length=self.length, gravity=self.gravity)
        _check_damping(self.damping)

    def vector_field(self, t, y):
        theta, omega = y
        return np.stack([omega, -(self.gravity / self.length) * np.sin(theta) - self.damping * omega])

    def first_integral(self, y):
        """Energy per unit m L^2: omega^2 / 2 - (g / L) cos(theta)."""
        if self.damping != 0:
            raise NotImplementedError("a damped pendulum conserves nothing; set damping=0 for energy")
        return 0.5 * y[..., 1] ** 2 - (self.gravity / self.length) * np.cos(y[..., 0])


@dataclass(frozen=True)
class LotkaVolterra(PhysicalSystem):
    """Predator-prey: x' = alpha x - beta x y, y' = delta x y - gamma y (x prey, y predator)."""

    alpha: float = 1.5  # prey growth rate
    beta: float = 1.0  # predation rate
    gamma: float = 3.0  # predator death rate
    delta: float = 1.0  # predator growth per prey eaten
    state_names = ("prey", "predator")
    initial_box = ((1.0, 5.0), (0.5, 3.0))  # around the equilibrium (gamma/delta, alpha/beta) = (3, 1.5)

    def __post_init__(self):
        _check_positive(alpha=self.alpha, beta=self.beta, gamma=self.gamma, delta=self.delta)

    def vector_field(self, t, y):
        x, p = y
        return np.stack([self.alpha * x - self.beta * x * p, self.delta * x * p - self.gamma * p])

    def first_integral(self, y):
        """V = delta x - gamma ln x + beta y - alpha ln y, constant along every orbit."""
        x, p = y[..., 0], y[..., 1]
        return self.delta * x - self.gamma * np.log(x) + self.beta * p - self.alpha * np.log(p)


@dataclass(frozen=True)
class DrivenOscillator(PhysicalSystem):
    """m x'' + c x' + k x = F cos(Omega t): a linear oscillator with an explicit time dependence."""

    mass: float = 1.0  # m
    stiffness: float = 1.0  # k
    damping: float = 0.2  # c
    drive_amplitude: float = 0.5  # F
    drive_frequency: float = 1.2  # Omega in rad/s
    state_names = ("x", "v")
    initial_box = ((-1.0, 1.0), (-1.0, 1.0))

    def __post_init__(self):
        _check_positive(mass=self.mass, stiffness=self.stiffness)
        _check_damping(self.damping)

    def vector_field(self, t, y):
        x, v = y
        force = self.drive_amplitude * np.cos(self.drive_frequency * t)
        return np.stack([v, (force - self.stiffness * x - self.damping * v) / self.mass])


SYSTEMS: dict[str, type[PhysicalSystem]] = {
    "mass-spring": DampedMassSpring,
    "pendulum": Pendulum,
    "lotka-volterra": LotkaVolterra,
    "driven-oscillator": DrivenOscillator,
}
