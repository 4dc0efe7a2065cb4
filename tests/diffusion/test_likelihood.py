"""Log-likelihood through the probability-flow ODE against closed-form densities."""

import math

import pytest
import torch

from pynodeta import record_stats
from pynodeta.diffusion import bits_per_dim, dequantize, log_likelihood

from .gaussian_data import correlated_case, standard_case


def test_exact_divergence_matches_the_gaussian_density():
    """log p = log N(x_T; 0, σ_max²I) + [log p_σmin(x) − log p_σmax(x_T)] along the exact flow x → x_T."""
    data = standard_case()
    x = data.noisy(16, 0.0, torch.Generator().manual_seed(0))
    with record_stats() as log:
        log_p = log_likelihood(data.denoiser, x, divergence="exact")
    x_end = data.flow(x, 0.002, 80.0)
    prior = -0.5 * (x_end**2).sum(dim=1) / 80.0**2 - math.log(2 * math.pi * 80.0**2)
    expected = prior + data.log_density(x, 0.002) - data.log_density(x_end, 80.0)
    assert (log_p - expected).abs().max() / data.dim < 1e-4
    # the prior N(0, σ_max²) ignores the data mean m: an O(|m|/σ_max) error per dimension remains
    assert (log_p - data.log_density(x, 0.002)).abs().max() / data.dim < 2 * 0.7 / 80.0
    assert log[-1].nfe > 0


def test_exact_divergence_on_a_correlated_gaussian():
    data = correlated_case()
    x = torch.distributions.MultivariateNormal(data.mean, data.cov).sample((8,))
    log_p = log_likelihood(data.denoiser, x, divergence="exact")
    assert (log_p - data.log_density(x, 0.002)).abs().max() / 3 < 1e-3


def test_hutchinson_is_unbiased_over_many_probes():
    """One x repeated 1024 times: each copy gets its own probe; the mean converges to the exact value."""
    data = correlated_case()
    x = torch.tensor([[0.5, 0.1, 0.2]], dtype=torch.float64).repeat(1024, 1)
    estimates = log_likelihood(data.denoiser, x, generator=torch.Generator().manual_seed(1), rtol=1e-4, atol=1e-4)
    exact = float(data.log_density(x[:1], 0.002))
    standard_error = float(estimates.std()) / math.sqrt(len(estimates))
    assert float(estimates.std()) > 1e-3  # the probes really vary (the Jacobian is not diagonal)
    assert abs(float(estimates.mean()) - exact) < 4 * standard_error + 2e-3


def _uniform_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x] for x0 ~ U(−1, 1) per entry: the mean of N(x, σ²) truncated to [−1, 1]."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    a, b = (-1 - x) / s, (1 - x) / s
    normal = torch.distributions.Normal(0.0, 1.0)
    mass = (torch.special.ndtr(b) - torch.special.ndtr(a)).clamp(min=1e-300)
    return x + s * (normal.log_prob(a).exp() - normal.log_prob(b).exp()) / mass


def test_bits_per_dim_of_uniform_integers_under_the_exact_model_is_log2_k():
    """Uniform data on {0, …, K−1} dequantises to U(−1, 1); its exact denoiser gives log2 K bits/dim."""
    K, g = 17, torch.Generator().manual_seed(2)
    x = torch.randint(1, K - 1, (6, 1, 2, 2), generator=g)  # interior values: the density is flat there
    bpd = bits_per_dim(_uniform_denoiser, x.double(), K, generator=g, divergence="exact")
    torch.testing.assert_close(bpd, torch.full((6,), math.log2(K), dtype=torch.float64), atol=2e-3, rtol=0)


def test_dequantize_scaling_and_bad_input():
    y = dequantize(torch.tensor([[0, 16]]), 17, torch.Generator().manual_seed(0))
    assert -1 <= float(y[0, 0]) < -1 + 2 / 17 and 1 - 2 / 17 <= float(y[0, 1]) <= 1
    with pytest.raises(ValueError, match="integers"):
        dequantize(torch.tensor([[0.5, 3.0]]), 17)
    with pytest.raises(ValueError, match="integers"):
        dequantize(torch.tensor([[0, 17]]), 17)


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma_min": 1.0, "sigma_max": 0.5}, "sigma_min must be < sigma_max"),
    ({"sigma_min": 0.0}, "sigma_min"), ({"divergence": "jacobian"}, "divergence"),
])
def test_bad_arguments_are_refused(kwargs, match):
    data = standard_case()
    with pytest.raises(ValueError, match=match):
        log_likelihood(data.denoiser, torch.zeros(2, 2, dtype=torch.float64), **kwargs)
