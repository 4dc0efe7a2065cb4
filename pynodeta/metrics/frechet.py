"""Fréchet distance between two sets of features (Heusel et al. 2017, Eq. 6; FID with Inception features)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

__all__ = ["frechet_distance", "frechet_distance_from_statistics", "feature_statistics"]


def _as_features(name: str, feats) -> np.ndarray:
    array = feats.detach().cpu().double().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"{name} must be a 2-D array (num_samples >= 2, feature_dim), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN/Inf; check the images handed to the feature extractor")
    return array


def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean (dim,) and unbiased covariance (dim, dim) of (num_samples, dim) features, float64."""
    array = _as_features("feats", feats)
    return array.mean(axis=0), np.cov(array, rowvar=False)


def frechet_distance_from_statistics(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray,
                                     eps: float = 1e-6) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}), in float64.

    pytorch-fid's ``calculate_frechet_distance`` step by step: scipy's matrix square root of Σ₁Σ₂; where it is
    not finite (a singular product), the square root of (Σ₁ + εI)(Σ₂ + εI); its imaginary part (round-off)
    dropped once the diagonal's is below 1e-3. edm2's ``calculate_metrics_from_stats`` is the same formula
    without the ε retry.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"the two feature sets must have the same dimension, got means {mu1.shape}, {mu2.shape} "
                         f"and covariances {cov1.shape}, {cov2.shape}")
    for name, statistic in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not np.isfinite(statistic).all():
            raise ValueError(f"{name} contains NaN/Inf; check the features it was computed from")
    sqrt_product = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(sqrt_product).all():
        offset = np.eye(len(mu1)) * eps
        sqrt_product = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(sqrt_product):
        if not np.allclose(np.diagonal(sqrt_product).imag, 0, atol=1e-3):  # pytorch-fid's test, on the trace's terms
            imaginary = np.abs(sqrt_product.imag).max()
            raise ValueError(f"the covariance square root has a large imaginary part ({imaginary:.3g}); "
                             "use more samples than feature dimensions")
        sqrt_product = sqrt_product.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(sqrt_product))


def frechet_distance(feats_a, feats_b, eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussians fitted to two (num_samples, dim) feature sets."""
    mu_a, cov_a = feature_statistics(_as_features("feats_a", feats_a))
    mu_b, cov_b = feature_statistics(_as_features("feats_b", feats_b))
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feats_a and feats_b must have the same feature dimension, got {mu_a.shape[0]} and "
                         f"{mu_b.shape[0]}")
    return frechet_distance_from_statistics(mu_a, cov_a, mu_b, cov_b, eps)
