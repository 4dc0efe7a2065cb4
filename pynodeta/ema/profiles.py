"""Power-function EMA profiles (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", Sec. 3 and App. C): the width σ_rel of a profile p(τ) ∝ τ^γ on [0, t], the
per-step β that tracks it, and the inner products used by post-hoc reconstruction."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_SIGMA_REL", "check_sigma_rel", "gamma_to_sigma_rel", "power_function_beta", "sigma_rel_to_gamma"]

# σ_rel of the flattest profile γ = 0 (a uniform average over all of training): √(1/12).
MAX_SIGMA_REL = math.sqrt(1.0 / 12.0)


def check_sigma_rel(sigma_rel: float, name: str = "sigma_rel") -> float:
    """σ_rel as a float, or a ValueError naming ``name`` when no power-function profile with γ > 0 has it."""
    value = float(sigma_rel)
    if not 0.0 < value < MAX_SIGMA_REL:
        raise ValueError(
            f"{name} must be in (0, {MAX_SIGMA_REL:.4f}) (σ_rel ≥ √(1/12) would need γ ≤ 0), got {sigma_rel}; "
            "the paper's range is 0.01–0.25, its defaults 0.05 and 0.10")
    return value


def gamma_to_sigma_rel(gamma: float) -> float:
    """σ_rel = sqrt((γ + 1) / ((γ + 2)² (γ + 3))) (paper Eq. 123)."""
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    return math.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exact inverse of Eq. 123 (Eq. 126 / Algorithm 2): the largest real root of
    γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0."""
    inverse_square = check_sigma_rel(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - inverse_square, 12.0 - inverse_square])
    return float(roots.real.max())


def power_function_beta(gamma: float, step: int, steps_since_last: int = 1) -> float:
    """β = (1 − Δt/t)^(γ + 1) (paper Eq. 127), t = optimiser steps done, Δt = steps since the last update.

    Updating θ_ema ← β θ_ema + (1 − β) θ after every step keeps θ_ema equal to the average of all
    past θ weighted by the profile τ^γ on [0, t]; β = 0 at t = Δt (the first update copies θ)."""
    return (1.0 - steps_since_last / step) ** (gamma + 1.0)


def power_function_correlation(a_step, a_gamma, b_step, b_gamma):
    """Inner product of two normalised power-function profiles (paper Eq. 151 / Algorithm 3):
    (γa + 1)(γb + 1) (ta/tb)^(γb if ta < tb else −γa) / ((γa + γb + 1) max(ta, tb)); numpy-broadcasting."""
    a_step, a_gamma, b_step, b_gamma = (np.asarray(v, dtype=np.float64) for v in (a_step, a_gamma, b_step, b_gamma))
    ratio_exponent = np.where(a_step < b_step, b_gamma, -a_gamma)
    numerator = (a_gamma + 1.0) * (b_gamma + 1.0) * (a_step / b_step) ** ratio_exponent
    return numerator / ((a_gamma + b_gamma + 1.0) * np.maximum(a_step, b_step))
