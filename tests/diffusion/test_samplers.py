"""Noise-level samplers on Gaussian data, where the exact denoiser and the exact flow are known."""

import math

import numpy as np
import pytest
import torch

from pynodeta import record_stats
from pynodeta.diffusion import (
    NonFiniteDenoiserError,
    get_sampler,
    karras_sigmas,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
)

from .gaussian_data import standard_case

DETERMINISTIC = [sample_euler, sample_heun, sample_dpmpp_2m]


def _geometric(n: int, sigma_from: float = 10.0, sigma_to: float = 0.05) -> torch.Tensor:
    return torch.logspace(math.log10(sigma_from), math.log10(sigma_to), n + 1, dtype=torch.float64)


@pytest.mark.parametrize("sampler, tolerance", [(sample_euler, 0.06), (sample_heun, 0.02), (sample_dpmpp_2m, 0.02)])
def test_samplers_reproduce_the_data_distribution(sampler, tolerance):
    """32 Karras steps: Euler (first order) is visibly off in the std, the second-order ones are not."""
    data, g = standard_case(), torch.Generator().manual_seed(0)
    sigmas = karras_sigmas(32, sigma_max=80.0, dtype=torch.float64)
    x = data.noisy(4000, 80.0, g)
    samples = sampler(data.denoiser, x, sigmas)
    std = torch.full((2,), data.std, dtype=torch.float64)
    torch.testing.assert_close(samples.mean(0), data.mean, atol=0.03, rtol=0)  # sampling error ≈ 0.01
    torch.testing.assert_close(samples.std(0), std, atol=tolerance, rtol=0)
    # deterministic: each sample is the exact flow of its own starting point, up to discretisation error
    torch.testing.assert_close(samples - data.mean, data.flow(x, 80.0, 0.0) - data.mean, atol=1e-3,
                               rtol=2 * tolerance / data.std)


@pytest.mark.parametrize("sampler, order", [(sample_euler, 1), (sample_heun, 2), (sample_dpmpp_2m, 2)])
def test_convergence_order_against_step_count(sampler, order):
    data, g = standard_case(), torch.Generator().manual_seed(1)
    x = data.noisy(8, 10.0, g)
    exact = data.flow(x, 10.0, 0.05)
    steps = [8, 16, 32, 64]
    errors = [float((sampler(data.denoiser, x, _geometric(n)) - exact).abs().max()) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope == pytest.approx(order, abs=0.25), errors


def test_heun_with_churn_keeps_the_distribution_and_is_seeded():
    data = standard_case()
    sigmas = karras_sigmas(32, dtype=torch.float64)
    x = data.noisy(4000, 80.0, torch.Generator().manual_seed(2))
    kwargs = {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.0}
    samples = sample_heun(data.denoiser, x, sigmas, generator=torch.Generator().manual_seed(3), **kwargs)
    torch.testing.assert_close(samples.mean(0), data.mean, atol=0.04, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.full((2,), data.std, dtype=torch.float64), atol=0.04, rtol=0)
    again = sample_heun(data.denoiser, x, sigmas, generator=torch.Generator().manual_seed(3), **kwargs)
    torch.testing.assert_close(samples, again, rtol=0, atol=0)
    deterministic = sample_heun(data.denoiser, x, sigmas)
    assert (samples - deterministic).abs().max() > 1e-3  # the churn really added noise


@pytest.mark.parametrize("sampler, nfe", [(sample_euler, 10), (sample_heun, 19), (sample_dpmpp_2m, 10)])
def test_samplers_report_their_evaluations(sampler, nfe):
    data = standard_case()
    sigmas = karras_sigmas(10, dtype=torch.float64)
    with record_stats() as log:
        sampler(data.denoiser, data.noisy(3, 80.0, torch.Generator().manual_seed(0)), sigmas)
    assert log[-1].nfe == nfe and log[-1].n_steps == 10 and log[-1].backend == "sampler"
    assert log[-1].t_evaluated[0] == pytest.approx(80.0)  # heun: 2 per step, but one at the last (to σ = 0)


@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_bad_noise_levels_are_refused(sampler):
    data, x = standard_case(), torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sampler(data.denoiser, x, karras_sigmas(5).flip(0))
    with pytest.raises(ValueError, match=">= 0"):
        sampler(data.denoiser, x, torch.tensor([1.0, 0.5, -0.1]))


@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_non_finite_denoiser_output_names_the_noise_level(sampler):
    def broken(x, sigma):
        return torch.where(sigma[:, None] < 1.0, torch.nan, x)

    sigmas = torch.tensor([4.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    with pytest.raises(NonFiniteDenoiserError, match="sigma=0.5"):
        sampler(broken, torch.ones(2, 2, dtype=torch.float64), sigmas)


def test_samplers_by_name():
    assert get_sampler("heun") is sample_heun
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        get_sampler("plms")


def test_finiteness_check_is_exact_when_the_sum_overflows():
    from pynodeta.diffusion._checks import all_finite

    huge = torch.full((4, 4), 3e38)  # finite entries whose float32 sum is +inf
    assert all_finite(huge)
    assert not all_finite(torch.tensor([1.0, float("inf"), -float("inf")]))
    assert not all_finite(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun])
@pytest.mark.parametrize("option, value", [("s_churn", math.nan), ("s_churn", math.inf), ("s_noise", math.nan),
                                           ("s_noise", math.inf), ("s_noise", -1.0), ("s_tmin", math.nan),
                                           ("s_tmin", -0.5), ("s_tmax", math.nan), ("s_tmax", -1.0)])
def test_churn_options_refuse_nan_inf_and_negative_values(sampler, option, value):
    """A NaN option passed the old `< 0` checks and turned every sample into NaN (or was silently ignored)."""
    data, x = standard_case(), torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"^{option} must be"):
        sampler(data.denoiser, x, karras_sigmas(4, dtype=torch.float64), **{"s_churn": 10.0, option: value})


@pytest.mark.parametrize("name, option", [("euler", "s_churn"), ("heun", "s_noise"), ("euler_ancestral", "eta"),
                                          ("dpm_adaptive", "rtol"), ("ddim", "eta"), ("lms", "order")])
def test_a_numeric_option_refuses_a_bool(name, option):
    """True passed every number check as 1: ``s_churn=true`` drew with churn 1 instead of being refused."""
    data, x = standard_case(), torch.zeros(2, 2, dtype=torch.float64)
    sigmas = karras_sigmas(4, dtype=torch.float64)
    with pytest.raises((TypeError, ValueError), match=rf"^{option} must be .*got True"):
        get_sampler(name)(data.denoiser, x, sigmas, disable=True, **{option: True})


def test_churn_accepts_an_unbounded_s_tmax():
    data = standard_case()
    x = data.noisy(2, 80.0, torch.Generator().manual_seed(0))
    sigmas = karras_sigmas(4, dtype=torch.float64)
    out = sample_euler(data.denoiser, x, sigmas, s_churn=10.0, s_tmax=math.inf, generator=torch.Generator())
    assert torch.isfinite(out).all()
