"""The samplers' mathematics on Gaussian data x0 ~ N(μ, s²), whose exact denoiser is
D(x, σ) = (s² x + σ² μ)/(s² + σ²) and whose probability flow is x(σ) = μ + (x_T − μ)·√((s² + σ²)/(s² + σ_T²)):
orders of convergence of the deterministic samplers, the output distribution of the stochastic ones,
and the exact identities between samplers."""

import math

import numpy as np
import pytest
import torch

from pynodeta import record_stats
from pynodeta.diffusion import get_sampler, karras_sigmas
from pynodeta.diffusion.ode_samplers import lms_coefficients

from .gaussian_data import GaussianData

DATA = GaussianData(torch.tensor([0.7]), std=0.5)
SIGMA_FROM, SIGMA_TO = 10.0, 0.05


def _geometric(n: int) -> torch.Tensor:
    return torch.logspace(math.log10(SIGMA_FROM), math.log10(SIGMA_TO), n + 1, dtype=torch.float64)


def _global_error(name: str, options: dict, n: int) -> float:
    x = DATA.noisy(8, SIGMA_FROM, torch.Generator().manual_seed(1))
    exact = DATA.flow(x, SIGMA_FROM, SIGMA_TO)
    return float((get_sampler(name)(DATA.denoiser, x, _geometric(n), **options) - exact).abs().max())


# (name, options, expected order, exact: the order is that, not only at least that). The multistep methods
# start with lower-order steps, so their global order is at least 2 (LMS-4 and 3M observe 3.5 and 2.1 here).
DETERMINISTIC = [
    ("euler", {}, 1, True), ("heun", {}, 2, True), ("dpm_2", {}, 2, True), ("dpmpp_2m", {}, 2, True),
    ("lms", {}, 2, False), ("euler_ancestral", {"eta": 0.0}, 1, True), ("dpm_2_ancestral", {"eta": 0.0}, 2, True),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, 2, True), ("dpmpp_sde", {"eta": 0.0}, 2, True),
    ("dpmpp_2m_sde", {"eta": 0.0}, 2, True), ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 2, True),
    ("dpmpp_3m_sde", {"eta": 0.0}, 2, False), ("ddim", {}, 1, True),
]


@pytest.mark.parametrize("name, options, order, exact", DETERMINISTIC)
def test_deterministic_samplers_converge_at_their_order(name, options, order, exact):
    errors = [_global_error(name, options, n) for n in (32, 64)]
    observed = math.log2(errors[0] / errors[1])
    if exact:
        assert observed == pytest.approx(order, abs=0.2), errors
    else:
        assert observed >= order - 0.2, errors


def test_lms_is_adams_bashforth_on_a_uniform_grid():
    """On equal steps h the Lagrange weights are AB4's h·(55, −59, 37, −9)/24, AB2's h·(3, −1)/2, and sum to h."""
    levels = [10.0, 9.0, 8.0, 7.0, 6.0, 5.0]
    np.testing.assert_allclose(lms_coefficients(levels, 3, 4), [-55 / 24, 59 / 24, -37 / 24, 9 / 24], rtol=1e-13)
    np.testing.assert_allclose(lms_coefficients(levels, 1, 2), [-3 / 2, 1 / 2], rtol=1e-13)
    uneven = [10.0, 6.0, 3.5, 2.0, 0.7, 0.0]
    assert sum(lms_coefficients(uneven, 4, 4)) == pytest.approx(uneven[5] - uneven[4], rel=1e-13)
    with pytest.raises(ValueError, match="order must be in"):
        lms_coefficients(levels, 1, 3)


# (name, options, steps, tolerance): first-order methods need more steps for the same bias
STOCHASTIC = [
    ("euler_ancestral", {}, 800, 0.012), ("ddim", {"eta": 1.0}, 800, 0.012), ("euler", {"s_churn": 40.0}, 800, 0.015),
    ("heun", {"s_churn": 40.0}, 200, 0.01), ("dpm_2", {"s_churn": 40.0}, 200, 0.01),
    ("dpm_2_ancestral", {}, 200, 0.01), ("dpmpp_2s_ancestral", {}, 200, 0.01), ("dpmpp_sde", {}, 200, 0.01),
    ("dpmpp_2m_sde", {}, 200, 0.01), ("dpmpp_2m_sde", {"solver_type": "heun"}, 200, 0.01),
    ("dpmpp_3m_sde", {}, 200, 0.01), ("dpmpp_sde", {"eta": 0.5, "s_noise": 1.0}, 200, 0.01),
]


@pytest.mark.parametrize("name, options, steps, tolerance", STOCHASTIC)
def test_stochastic_samplers_reproduce_the_data_distribution(name, options, steps, tolerance):
    """20000 one-dimensional samples: standard errors 0.0035 (mean) and 0.0025 (std), the rest is the
    discretisation's bias."""
    x = DATA.noisy(20000, 80.0, torch.Generator().manual_seed(0))
    samples = get_sampler(name)(DATA.denoiser, x, karras_sigmas(steps, dtype=torch.float64),
                                generator=torch.Generator().manual_seed(5), **options)
    assert float(samples.mean()) == pytest.approx(0.7, abs=tolerance)
    assert float(samples.std()) == pytest.approx(0.5, abs=tolerance)


def test_the_ancestral_noise_really_is_noise():
    """Without noise an ancestral step to σ_down < σ_{i+1} leaves the samples far too narrow."""
    x = DATA.noisy(20000, 80.0, torch.Generator().manual_seed(0))
    quiet = get_sampler("euler_ancestral")(DATA.denoiser, x, karras_sigmas(200, dtype=torch.float64), s_noise=0.0)
    assert float(quiet.std()) < 0.3


@pytest.mark.parametrize("name", ["euler_ancestral", "ddim"])
def test_zero_eta_is_euler(name):
    x, sigmas = DATA.noisy(8, 80.0, torch.Generator().manual_seed(2)), karras_sigmas(10, dtype=torch.float64)
    torch.testing.assert_close(get_sampler(name)(DATA.denoiser, x, sigmas, eta=0.0),
                               get_sampler("euler")(DATA.denoiser, x, sigmas), rtol=0, atol=1e-14)


def test_ddim_with_eta_up_to_one_is_euler_ancestral():
    """DDIM's Eq. 16 noise in σ is k-diffusion's ancestral σ_up; the two differ only in the cap beyond η = 1."""
    x, sigmas = DATA.noisy(8, 80.0, torch.Generator().manual_seed(2)), karras_sigmas(10, dtype=torch.float64)
    for eta in (0.3, 1.0):
        ddim = get_sampler("ddim")(DATA.denoiser, x, sigmas, eta=eta, generator=torch.Generator().manual_seed(1))
        ancestral = get_sampler("euler_ancestral")(DATA.denoiser, x, sigmas, eta=eta,
                                                   generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(ddim, ancestral, rtol=0, atol=1e-12)


def test_dpmpp_2m_sde_without_noise_is_dpmpp_2m():
    x, sigmas = DATA.noisy(8, 80.0, torch.Generator().manual_seed(2)), karras_sigmas(10, dtype=torch.float64)
    torch.testing.assert_close(get_sampler("dpmpp_2m_sde")(DATA.denoiser, x, sigmas, eta=0.0),
                               get_sampler("dpmpp_2m")(DATA.denoiser, x, sigmas), rtol=0, atol=1e-12)


def test_dpmpp_sde_without_noise_is_dpmpp_2s():
    x, sigmas = DATA.noisy(8, 80.0, torch.Generator().manual_seed(2)), karras_sigmas(10, dtype=torch.float64)
    torch.testing.assert_close(get_sampler("dpmpp_sde")(DATA.denoiser, x, sigmas, eta=0.0),
                               get_sampler("dpmpp_2s_ancestral")(DATA.denoiser, x, sigmas, eta=0.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [2, 3])
def test_the_adaptive_sampler_meets_its_tolerance(order):
    """The error against the exact flow falls with rtol, at a cost of ``order`` evaluations per attempted step."""
    x = DATA.noisy(64, SIGMA_FROM, torch.Generator().manual_seed(3))
    exact = DATA.flow(x, SIGMA_FROM, SIGMA_TO)
    sigmas = torch.tensor([SIGMA_FROM, 1.0, SIGMA_TO], dtype=torch.float64)  # only the ends count
    errors, nfes = [], []
    for rtol in (1e-2, 1e-4):
        with record_stats() as log:
            out = get_sampler("dpm_adaptive")(DATA.denoiser, x, sigmas, order=order, rtol=rtol, atol=rtol / 100)
        errors.append(float((out - exact).abs().max()))
        stats = log[-1]
        nfes.append(stats.nfe)
        assert stats.nfe == order * stats.n_steps and stats.n_steps == stats.n_accepted + stats.n_rejected
        assert sum(stats.step_sizes) == pytest.approx(math.log(SIGMA_FROM / SIGMA_TO), abs=1e-5)
    assert errors[1] < errors[0] / 10 and errors[1] < 1e-3 and nfes[1] > nfes[0], (errors, nfes)


def test_the_adaptive_sampler_ends_on_the_denoised_sample_when_sigmas_end_at_zero():
    x = DATA.noisy(16, SIGMA_FROM, torch.Generator().manual_seed(3))
    sampler = get_sampler("dpm_adaptive")
    at_sigma_min = sampler(DATA.denoiser, x, torch.tensor([SIGMA_FROM, SIGMA_TO], dtype=torch.float64), rtol=1e-4)
    with record_stats() as log:
        to_zero = sampler(DATA.denoiser, x, torch.tensor([SIGMA_FROM, SIGMA_TO, 0.0], dtype=torch.float64), rtol=1e-4)
    torch.testing.assert_close(to_zero, DATA.denoiser(at_sigma_min, torch.full((16,), SIGMA_TO, dtype=torch.float64)))
    assert log[-1].t_evaluated[-1] == SIGMA_TO


def test_the_adaptive_sampler_with_eta_keeps_the_distribution():
    x = DATA.noisy(20000, 80.0, torch.Generator().manual_seed(0))
    samples = get_sampler("dpm_adaptive")(DATA.denoiser, x, karras_sigmas(10, dtype=torch.float64), eta=1.0,
                                          rtol=0.01, atol=1e-3, generator=torch.Generator().manual_seed(5))
    assert float(samples.mean()) == pytest.approx(0.7, abs=0.015)
    assert float(samples.std()) == pytest.approx(0.5, abs=0.015)
