"""Fréchet distance against the closed form for two Gaussians."""

import numpy as np
import pytest
import torch

from pynodeta.metrics import feature_statistics, frechet_distance, frechet_distance_from_statistics


def _closed_form(mu1, cov1, mu2, cov2):
    """Tr((Σ₁Σ₂)^{1/2}) = Tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}), the symmetric form, through eigendecompositions."""
    def sqrt_psd(m):
        values, vectors = np.linalg.eigh(m)
        return vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root1 = sqrt_psd(cov1)
    cross = np.trace(sqrt_psd(root1 @ cov2 @ root1))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def _random_gaussian(rng, dim):
    a = rng.normal(size=(dim, dim))
    return rng.normal(size=dim), a @ a.T / dim + 0.1 * np.eye(dim)


def test_statistics_form_matches_the_closed_form():
    rng = np.random.default_rng(0)
    (mu1, cov1), (mu2, cov2) = _random_gaussian(rng, 6), _random_gaussian(rng, 6)
    assert frechet_distance_from_statistics(mu1, cov1, mu2, cov2) == pytest.approx(_closed_form(mu1, cov1, mu2, cov2),
                                                                                   rel=1e-8)
    # commuting (diagonal) covariances: ‖Δμ‖² + Σ(√a − √b)²
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = 1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    value = frechet_distance_from_statistics(np.zeros(3), np.diag(a), np.array([1.0, 0, 0]), np.diag(b))
    assert value == pytest.approx(expected, rel=1e-10)
    assert frechet_distance_from_statistics(mu1, cov1, mu1, cov1) == pytest.approx(0.0, abs=1e-8)


def test_sample_estimate_converges_to_the_closed_form():
    rng = np.random.default_rng(1)
    (mu1, cov1), (mu2, cov2) = _random_gaussian(rng, 4), _random_gaussian(rng, 4)
    a = rng.multivariate_normal(mu1, cov1, size=40000)
    b = rng.multivariate_normal(mu2, cov2, size=40000)
    exact = _closed_form(mu1, cov1, mu2, cov2)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(exact, rel=0.03, abs=0.01)
    mean, cov = feature_statistics(a)
    np.testing.assert_allclose(cov, np.cov(a, rowvar=False))
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


def test_fewer_samples_than_dimensions_still_gives_a_finite_value():
    rng = np.random.default_rng(2)
    value = frechet_distance(rng.normal(size=(5, 20)), rng.normal(size=(5, 20)))
    assert np.isfinite(value) and value > 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same feature dimension"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="num_samples >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((4, 3), np.nan), np.zeros((4, 3)))


@pytest.mark.parametrize("which", ["mu1", "cov1", "mu2", "cov2"])
def test_non_finite_statistics_are_refused_by_name(which):
    statistics = {"mu1": np.zeros(3), "cov1": np.eye(3), "mu2": np.ones(3), "cov2": np.eye(3)}
    statistics[which].flat[0] = np.nan
    with pytest.raises(ValueError, match=f"{which} contains NaN/Inf"):
        frechet_distance_from_statistics(**statistics)
