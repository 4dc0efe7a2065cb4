"""Schedules: the β formulas, the forward process, the posterior and the variational-bound terms."""

import math

import pytest
import torch
from scipy.stats import norm

from pynodeta.diffusion import DDPMSchedule, karras_sigmas


def test_karras_sigmas_follow_edm_eq5_and_end_at_zero():
    sigmas = karras_sigmas(10, sigma_min=0.002, sigma_max=80.0, rho=7.0, dtype=torch.float64)
    assert sigmas.shape == (11,)
    assert sigmas[0] == pytest.approx(80.0, rel=1e-12) and sigmas[9] == pytest.approx(0.002, rel=1e-12)
    assert sigmas[10] == 0 and (sigmas[1:] < sigmas[:-1]).all()
    i = 4  # Eq. 5 by hand
    expected = (80 ** (1 / 7) + i / 9 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert float(sigmas[i]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n "), ({"n": 4, "sigma_min": 1.0, "sigma_max": 1.0}, "sigma_min"),
    ({"n": 4, "sigma_min": -1.0}, "sigma_min"), ({"n": 4, "rho": 0.0}, "rho"),
])
def test_karras_sigmas_reject_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        karras_sigmas(**kwargs)


def test_beta_schedules_match_their_formulas():
    T = 1000
    linear = DDPMSchedule(T, "linear")
    assert float(linear.betas[0]) == pytest.approx(1e-4) and float(linear.betas[-1]) == pytest.approx(0.02)
    assert float(linear.betas[500]) == pytest.approx(1e-4 + 500 / 999 * (0.02 - 1e-4), rel=1e-12)
    quad = DDPMSchedule(T, "quad")
    assert float(quad.betas[300]) == pytest.approx((1e-2 + 300 / 999 * (0.02**0.5 - 1e-2)) ** 2, rel=1e-12)
    cosine = DDPMSchedule(T, "cosine")
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 250, 700):  # ᾱ at index t is the paper's ᾱ(t + 1) = f((t + 1)/T)/f(0) (no clipping there)
        assert float(cosine.alphas_cumprod[t]) == pytest.approx(f((t + 1) / T) / f(0), rel=1e-10)
    assert float(cosine.betas.max()) <= 0.999
    torch.testing.assert_close(linear.alphas_cumprod, torch.cumprod(1 - linear.betas, 0))


def test_add_noise_snr_and_sigmas_agree():
    schedule = DDPMSchedule(100, "linear", 1e-3, 0.05)
    t = torch.tensor([0, 17, 99])
    x0, noise = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(3, 2, 4, dtype=torch.float64)
    alpha = schedule.alphas_cumprod[t].reshape(3, 1, 1)
    torch.testing.assert_close(schedule.add_noise(x0, noise, t), alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise)
    torch.testing.assert_close(schedule.snr(t), 1 / schedule.sigmas[t] ** 2)
    x_t = schedule.add_noise(x0, noise, t)
    torch.testing.assert_close(schedule.predict_x0(x_t, t, noise), x0)


def test_posterior_is_bayes_rule_of_the_two_gaussians():
    """q(x_{t−1} | x_t, x0) ∝ N(x_t; √α_t x_{t−1}, β_t) N(x_{t−1}; √ᾱ_{t−1} x0, 1 − ᾱ_{t−1})."""
    schedule = DDPMSchedule(50, "cosine")
    t = torch.tensor([1, 10, 49])
    x0, x_t = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    beta, alpha_prev = schedule.betas[t][:, None], schedule.alphas_cumprod_prev[t][:, None]
    precision = (1 - beta) / beta + 1 / (1 - alpha_prev)
    mean_expected = ((1 - beta).sqrt() * x_t / beta + alpha_prev.sqrt() * x0 / (1 - alpha_prev)) / precision
    mean, variance, log_variance = schedule.posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(mean, mean_expected)
    torch.testing.assert_close(variance, (1 / precision).expand(3, 1))
    torch.testing.assert_close(log_variance, variance.log())


def test_vb_terms_are_nonnegative_and_vanish_when_the_means_match():
    schedule = DDPMSchedule(200, "quad")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.randint(1, 200, (64,), generator=g)
    x_t = schedule.add_noise(x0, noise, t)
    exact = schedule.vb_terms(x0, x_t, t, noise)  # ε̂ = ε ⇒ x̂0 = x0 ⇒ the two means coincide
    assert exact.abs().max() < 1e-9
    wrong = schedule.vb_terms(x0, x_t, t, noise + 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64))
    assert (wrong > 0).all()
    # the KL of two Gaussians with equal variance: (Δmean)²/(2 var), in bits, averaged over dimensions
    mean, var, _ = schedule.posterior_mean_variance(x0, x_t, t)
    eps_wrong = noise + 0.3
    model_mean, _, _ = schedule.p_mean_variance(x_t, t, eps_wrong)
    expected = ((mean - model_mean) ** 2 / (2 * var)).mean(dim=(1, 2, 3)) / math.log(2)
    torch.testing.assert_close(schedule.vb_terms(x0, x_t, t, eps_wrong), expected)
    assert (schedule.vb_terms(x0, x_t, t, noise, variance="fixed_large") > 0).all()


def test_decoder_term_is_the_discretised_gaussian_nll():
    schedule = DDPMSchedule(100)
    x0 = torch.tensor([[-1.0, -0.5, 0.0, 1.0]], dtype=torch.float64)  # on the 5-value grid (num_bins=5)
    eps = torch.tensor([[0.3, -1.2, 0.5, 0.1]], dtype=torch.float64)
    t = torch.zeros(1, dtype=torch.long)
    x_t = schedule.add_noise(x0, eps, t)
    eps_pred = eps + 2.0  # a deliberately wrong prediction moves the decoder's mean
    mean, _, log_var = schedule.p_mean_variance(x_t, t, eps_pred)
    std, half = float(torch.exp(0.5 * log_var)), 1 / 4
    probs = []
    for xi, mi in zip(x0[0].tolist(), mean[0].tolist()):
        upper = 1.0 if xi == 1.0 else norm.cdf((xi + half - mi) / std)
        lower = 0.0 if xi == -1.0 else norm.cdf((xi - half - mi) / std)
        probs.append(upper - lower)
    expected = -sum(math.log(p) for p in probs) / 4 / math.log(2)
    assert float(schedule.vb_terms(x0, x_t, t, eps_pred, num_bins=5)) == pytest.approx(expected, rel=1e-6)


def test_prior_kl_closed_form():
    schedule = DDPMSchedule(30, "linear", 1e-3, 0.2)
    x0 = torch.randn(3, 6, dtype=torch.float64)
    alpha = float(schedule.alphas_cumprod[-1])
    kl = 0.5 * (-1 - math.log(1 - alpha) + (1 - alpha) + alpha * x0**2)
    torch.testing.assert_close(schedule.prior_kl(x0), kl.mean(dim=1) / math.log(2))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_timesteps": 0}, "num_timesteps"), ({"beta_schedule": "sigmoid"}, "beta_schedule"),
    ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start"),
])
def test_schedule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMSchedule(**kwargs)


def test_timesteps_outside_range_or_fractional_are_refused():
    schedule = DDPMSchedule(10)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"\[0, T\) = \[0, 10\)"):
        schedule.add_noise(x, x, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="integer"):
        schedule.add_noise(x, x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="variance"):
        schedule.p_mean_variance(x, torch.tensor([1, 2]), x, variance="learned")


def test_from_betas_rebuilds_a_named_schedule_and_refuses_bad_betas():
    named = DDPMSchedule(50, "cosine")
    rebuilt = DDPMSchedule.from_betas(named.betas.tolist())
    assert rebuilt.num_timesteps == 50 and rebuilt.beta_schedule == "custom"
    assert torch.equal(rebuilt.sigmas, named.sigmas)
    assert torch.equal(rebuilt.posterior_log_variance, named.posterior_log_variance)
    for bad in ([], [0.1, 1.0], [-0.1]):
        with pytest.raises(ValueError, match="betas must be"):
            DDPMSchedule.from_betas(bad)
