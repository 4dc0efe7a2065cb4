"""Log-likelihood through the probability-flow ODE against closed-form densities."""

import math

import pytest
import torch

from pynodeta import Adjoint, IController, PIController, SolverSettings, record_stats
from pynodeta.diffusion import (
    DDPMSchedule,
    DenoiserFromEpsilon,
    EDMPrecond,
    bits_per_dim,
    dequantize,
    log_likelihood,
    probability_flow,
)

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


@pytest.mark.parametrize("shape", [(0,), (0, 1, 8, 8)])
def test_dequantize_refuses_an_empty_tensor_by_name(shape):
    with pytest.raises(ValueError, match=r"x is empty \(shape \(0,"):
        dequantize(torch.zeros(shape, dtype=torch.long), 17)


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma_min": 1.0, "sigma_max": 0.5}, "sigma_min must be < sigma_max"),
    ({"sigma_min": 0.0}, "sigma_min"), ({"divergence": "jacobian"}, "divergence"),
])
def test_bad_arguments_are_refused(kwargs, match):
    data = standard_case()
    with pytest.raises(ValueError, match=match):
        log_likelihood(data.denoiser, torch.zeros(2, 2, dtype=torch.float64), **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_data_is_refused_under_the_name_x(bad):
    x = torch.zeros(2, 2, dtype=torch.float64)
    x[1, 0] = bad
    with pytest.raises(ValueError, match=r"x \(the data to score\) contains NaN or Inf.*dequantize"):
        log_likelihood(standard_case().denoiser, x)


def test_a_generator_that_is_not_a_torch_generator_is_refused():
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        log_likelihood(standard_case().denoiser, x, generator=0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        dequantize(torch.zeros(2, 2, dtype=torch.long), 17, generator=0)


def _prior_and_flow_identity(data, x, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """log N(x_T; 0, σ_max²I) + log p_σmin(x) − log p_σmax(x_T) along the exact flow x → x_T: what
    log_likelihood computes for Gaussian data, for any σ_max (the prior ignores the data mean)."""
    x_end = data.flow(x, sigma_min, sigma_max)
    prior = -0.5 * (x_end**2).sum(dim=1) / sigma_max**2 - 0.5 * data.dim * math.log(2 * math.pi * sigma_max**2)
    return prior + data.log_density(x, sigma_min) - data.log_density(x_end, sigma_max)


@pytest.mark.parametrize("schedule", [DDPMSchedule(1000), DDPMSchedule(1000, "cosine"), DDPMSchedule(20)],
                         ids=["linear", "cosine", "short"])
def test_ddpm_likelihood_with_defaults_integrates_the_schedules_range(schedule):
    """Defaults from the denoiser's sigma_min/sigma_max (the short schedule ends at σ = 0.47 < 80); no
    evaluation leaves the range (dopri5 would step past σ_max and the denoiser refuse it)."""
    data = standard_case()
    denoiser = DenoiserFromEpsilon(data.fractional_eps_model(schedule), schedule, timestep="interpolate")
    x = data.noisy(8, 0.0, torch.Generator().manual_seed(3))
    with record_stats() as log:
        log_p = log_likelihood(denoiser, x, divergence="exact")
    low, high = denoiser.sigma_min, denoiser.sigma_max
    assert low <= min(log[-1].t_evaluated) and max(log[-1].t_evaluated) <= high
    expected = _prior_and_flow_identity(data, x, low, high)
    assert (log_p - expected).abs().max() / data.dim < 1e-3  # the bound for the exact divergence
    if high > 100:  # the prior's O(|m|/σ_max) error per dimension is small: the Gaussian density itself
        assert (log_p - data.log_density(x, low)).abs().max() / data.dim < 2 * 0.7 / high + 1e-3


def test_ddpm_likelihood_in_float32_and_the_adjoint_flow_stay_inside_the_range():
    data, schedule = standard_case(), DDPMSchedule(50)
    denoiser = DenoiserFromEpsilon(data.fractional_eps_model(schedule), schedule, timestep="interpolate")
    x = data.noisy(4, 0.0, torch.Generator().manual_seed(4)).float()
    log_p = log_likelihood(denoiser, x, divergence="exact", rtol=1e-4, atol=1e-4)
    expected = _prior_and_flow_identity(data, x.double(), denoiser.sigma_min, denoiser.sigma_max)
    assert (log_p.double() - expected).abs().max() / data.dim < 1e-3
    start = x.double().mul(denoiser.sigma_max).requires_grad_(True)
    solution = probability_flow(denoiser, start, denoiser.sigma_max, denoiser.sigma_min, adjoint=True,
                                adjoint_params=())
    solution.ys[-1].sum().backward()  # the backward solve, from σ_min back to σ_max, also stays inside
    evaluated = solution.stats.t_evaluated + solution.stats.t_evaluated_adjoint
    assert denoiser.sigma_min <= min(evaluated) and max(evaluated) <= denoiser.sigma_max
    scale = math.sqrt((data.std**2 + denoiser.sigma_min**2) / (data.std**2 + denoiser.sigma_max**2))
    torch.testing.assert_close(start.grad, torch.full_like(start, scale), rtol=1e-4, atol=0)


def test_noise_levels_outside_the_denoisers_range_are_refused_not_clamped():
    data, schedule = standard_case(), DDPMSchedule(1000)
    denoiser = DenoiserFromEpsilon(data.fractional_eps_model(schedule), schedule, timestep="interpolate")
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"sigma_max=200 lies outside .* \[0.0100005, 157.407\]"):
        log_likelihood(denoiser, x, sigma_max=200.0)
    with pytest.raises(ValueError, match=r"sigma_min=0.002 lies outside"):
        log_likelihood(denoiser, x, sigma_min=0.002)
    with pytest.raises(ValueError, match=r"sigma_start=80 lies outside"):
        probability_flow(DenoiserFromEpsilon(data.fractional_eps_model(DDPMSchedule(20)), DDPMSchedule(20)),
                         x, 80.0, 0.1)
    with pytest.raises(ValueError, match=r"sigma_end=0.005 lies outside"):
        probability_flow(denoiser, x, 100.0, 0.005)


def test_edm_preconditioning_declares_every_positive_sigma():
    """EDMPrecond accepts σ in (0, inf): log_likelihood's defaults are EDM's 0.002 and 80."""
    precond = EDMPrecond(lambda c_noise, x: torch.zeros_like(x), sigma_data=0.5)
    assert (precond.sigma_min, precond.sigma_max) == (0.0, math.inf)
    with record_stats() as log:
        log_likelihood(precond, torch.zeros(2, 2, dtype=torch.float64), divergence="exact", rtol=1e-3, atol=1e-3)
    assert min(log[-1].t_evaluated) == pytest.approx(0.002) and max(log[-1].t_evaluated) == pytest.approx(80.0)


def test_typed_controllers_stay_inside_the_range_forward_and_backward():
    """The span's ends join the step_t of a typed controller, the Adjoint's own controller included."""
    data, schedule = standard_case(), DDPMSchedule(50)
    denoiser = DenoiserFromEpsilon(data.fractional_eps_model(schedule), schedule, timestep="interpolate")
    low, high = denoiser.sigma_min, denoiser.sigma_max
    x = data.noisy(4, 0.0, torch.Generator().manual_seed(5))
    solver = SolverSettings(method="tsit5", controller=PIController(rtol=1e-6, atol=1e-6, step_t=(0.5,)))
    with record_stats() as log:
        log_p = log_likelihood(denoiser, x, solver=solver, divergence="exact")
    assert low <= min(log[-1].t_evaluated) and max(log[-1].t_evaluated) <= high
    assert min(abs(t - 0.5) for t in log[-1].t_evaluated) < 1e-12  # the caller's step_t is kept
    assert (log_p - _prior_and_flow_identity(data, x, low, high)).abs().max() / data.dim < 1e-3
    start = x.mul(high).requires_grad_(True)
    backward = Adjoint(controller=IController(rtol=1e-6, atol=1e-6), params=())
    solution = probability_flow(denoiser, start, high, low, solver=SolverSettings(adjoint=backward))
    solution.ys[-1].sum().backward()
    evaluated = solution.stats.t_evaluated + solution.stats.t_evaluated_adjoint
    assert low <= min(evaluated) and max(evaluated) <= high
    scale = math.sqrt((data.std**2 + low**2) / (data.std**2 + high**2))
    torch.testing.assert_close(start.grad, torch.full_like(start, scale), rtol=1e-4, atol=0)


def test_likelihood_takes_typed_settings_and_refuses_them_with_sugar():
    data = standard_case()
    x = data.noisy(4, 0.0, torch.Generator().manual_seed(6))
    sugar = log_likelihood(data.denoiser, x, divergence="exact", rtol=1e-4, atol=1e-4)
    typed = log_likelihood(data.denoiser, x, divergence="exact", controller=IController(rtol=1e-4, atol=1e-4))
    assert torch.equal(sugar, typed)
    with pytest.raises(TypeError, match=r"log_likelihood\(\) got both solver= and method="):
        log_likelihood(data.denoiser, x, solver=SolverSettings(), method="rk4")
