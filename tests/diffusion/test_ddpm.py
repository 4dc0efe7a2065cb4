"""DDPM ancestral sampling, DDIM and DenoiserFromEpsilon with the exact ε-predictor of Gaussian data."""

import pytest
import torch

from pynodeta import record_stats
from pynodeta.diffusion import (
    DDPMSchedule,
    DenoiserFromEpsilon,
    NonFiniteDenoiserError,
    ddim_timesteps,
    karras_sigmas,
    sample_ddim,
    sample_ddpm,
    sample_heun,
)

from .gaussian_data import standard_case


def _check_moments(samples, data, atol):
    torch.testing.assert_close(samples.mean(0), data.mean, atol=atol, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.full((2,), data.std, dtype=torch.float64), atol=atol, rtol=0)


def test_ancestral_sampling_reproduces_the_data():
    data, schedule = standard_case(), DDPMSchedule(250, "linear", 4e-4, 0.08)  # DDPM's T = 1000 betas × 4
    x_T = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with record_stats() as log:
        samples = sample_ddpm(data.eps_model(schedule), x_T, schedule, generator=torch.Generator().manual_seed(1))
    _check_moments(samples, data, atol=0.04)
    assert log[-1].nfe == 250 and log[-1].t_evaluated[0] == 249.0 and log[-1].t_evaluated[-1] == 0.0


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_reproduces_the_data(eta):
    data, schedule = standard_case(), DDPMSchedule(1000, "cosine")
    x_T = torch.randn(4000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with record_stats() as log:
        samples = sample_ddim(data.eps_model(schedule), x_T, schedule, num_steps=100, eta=eta,
                              generator=torch.Generator().manual_seed(3))
    _check_moments(samples, data, atol=0.04)
    assert log[-1].nfe == 100


def test_ddim_error_shrinks_like_the_step_size():
    """DDIM (η = 0) is a first-order method of the probability-flow ODE: halving the step halves the error."""
    data, schedule = standard_case(), DDPMSchedule(1000)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    reference = sample_ddim(data.eps_model(schedule), x_T, schedule, num_steps=1000)
    errors = [float((sample_ddim(data.eps_model(schedule), x_T, schedule, num_steps=n) - reference).abs().max())
              for n in (20, 40, 80)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(1.6 < r < 2.6 for r in ratios), errors


def test_ddim_timesteps_span_the_schedule():
    assert ddim_timesteps(1000, 5) == [999, 749, 500, 250, 0]
    with pytest.raises(ValueError, match="num_steps"):
        ddim_timesteps(10, 11)


@pytest.mark.parametrize("timestep", ["nearest", "interpolate"])
def test_denoiser_from_epsilon_is_the_exact_denoiser_on_the_grid(timestep):
    data, schedule = standard_case(), DDPMSchedule(100, "linear", 1e-3, 0.05)

    def eps_model(t, x):  # accepts fractional t only at the grid points the test uses
        assert torch.allclose(t.double(), t.double().round())
        return data.eps_model(schedule)(t.round().long(), x)

    denoiser = DenoiserFromEpsilon(eps_model, schedule, timestep=timestep)
    sigma = schedule.sigmas[[3, 40, 99]]
    x = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(denoiser(x, sigma), data.denoiser(x, sigma))


def test_heun_on_a_ddpm_network_through_the_ve_view():
    data, schedule = standard_case(), DDPMSchedule(1000)
    denoiser = DenoiserFromEpsilon(data.eps_model(schedule), schedule)
    sigmas = karras_sigmas(40, denoiser.sigma_min, denoiser.sigma_max, dtype=torch.float64)
    x = data.noisy(4000, denoiser.sigma_max, torch.Generator().manual_seed(5))
    _check_moments(sample_heun(denoiser, x, sigmas), data, atol=0.04)
    with pytest.raises(ValueError, match="karras_sigmas"):
        denoiser(x[:2], torch.tensor([0.002, 0.002], dtype=torch.float64))


def test_bad_input_is_refused():
    schedule, x = DDPMSchedule(10), torch.zeros(2, 2)
    with pytest.raises(ValueError, match="timestep"):
        DenoiserFromEpsilon(lambda t, x: x, schedule, timestep="linear")
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(lambda t, x: x, x, schedule, num_steps=5, eta=-1.0)
    with pytest.raises(TypeError, match="DDPMSchedule"):
        sample_ddpm(lambda t, x: x, x, "linear")
    for sampler in (sample_ddpm, sample_ddim):
        with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
            sampler(lambda t, x: x, x, schedule, generator=0)

    def broken(t, x):
        return torch.where(t[:, None] < 4, torch.inf, x)

    with pytest.raises(NonFiniteDenoiserError, match="t=3"):
        sample_ddpm(broken, x, schedule)


@pytest.mark.parametrize("eta", [float("nan"), float("inf"), -0.5])
def test_ddim_refuses_a_non_finite_or_negative_eta(eta):
    """eta = NaN used to pass the eta < 0 check and return all-NaN images."""
    schedule, x = DDPMSchedule(10), torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"eta must be finite and >= 0 \(0: deterministic DDIM"):
        sample_ddim(lambda t, x: x, x, schedule, num_steps=5, eta=eta)


@pytest.mark.parametrize("draw", [sample_ddpm, sample_ddim])
def test_the_epsilon_samplers_keep_no_graph(draw):
    schedule = DDPMSchedule(20, "linear", 1e-4, 0.02)
    scale = torch.nn.Parameter(torch.ones(()))
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    options = {"num_steps": 5} if draw is sample_ddim else {}
    out = draw(lambda t, x: 0.1 * x * scale, x_T, schedule, **options)  # an ε-network is called as (t, x)
    assert not out.requires_grad and out.grad_fn is None
