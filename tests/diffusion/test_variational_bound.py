"""The whole-chain variational bound against the exact likelihood of a linear-Gaussian DDPM model."""

import math

import pytest
import torch

from pynodeta.diffusion import DDPMSchedule, NonFiniteDenoiserError, variational_bound
from pynodeta.diffusion.variational_bound import _strata_edges, _timesteps_and_weights

from .gaussian_data import GaussianData

NUM_BINS = 17
DATA = GaussianData(torch.tensor([0.25, -0.5, 0.0]), std=0.4)


def _grid_points(n: int, generator: torch.Generator) -> torch.Tensor:
    """n data points on the 17 values 2k/16 − 1, near the Gaussian's bulk, (n, 3) float64."""
    x = DATA.noisy(n, 0.0, generator).clamp(-1, 1)
    return ((x + 1) * (NUM_BINS - 1) / 2).round() * 2 / (NUM_BINS - 1) - 1


def _affine_reverse_steps(schedule: DDPMSchedule, eps_model, dim: int):
    """(A_t, c_t, variance_t) with p(x_{t−1} | x_t) = N(A_t x_t + c_t, variance_t), per dimension: the reverse
    mean is affine in x_t because the exact ε-predictor of Gaussian data is (read off at x_t = 0 and 1). The
    variance is exp(log-variance), which at t = 0 is clipped to β̃ of the next step as in the decoder."""
    steps = []
    for t in range(schedule.num_timesteps):
        index = torch.full((2,), t, dtype=torch.long)
        x_t = torch.stack([torch.zeros(dim), torch.ones(dim)]).double()
        mean, _, log_var = schedule.p_mean_variance(x_t, index, eps_model(index, x_t))
        steps.append((mean[1] - mean[0], mean[0], log_var[0].exp().expand(dim)))
    return steps


def _exact_nll_bits_per_dim(schedule: DDPMSchedule, x0: torch.Tensor) -> torch.Tensor:
    """−log₂ p_θ(x0)/D of the model itself: x_T ~ N(0, I) pushed through the affine-Gaussian reverse steps stays
    Gaussian, and the decoder's bins are integrals of the last one."""
    steps = _affine_reverse_steps(schedule, DATA.eps_model(schedule), x0.shape[1])
    mean, var = torch.zeros(x0.shape[1], dtype=torch.float64), torch.ones(x0.shape[1], dtype=torch.float64)
    for gain, offset, step_var in reversed(steps):  # t = T − 1 … 0; the last one is the decoder's Gaussian
        mean, var = gain * mean + offset, gain**2 * var + step_var
    half = 1.0 / (NUM_BINS - 1)
    normal = torch.distributions.Normal(mean, var.sqrt())
    upper = torch.where(x0 > 1 - half, torch.ones_like(x0), normal.cdf(x0 + half))
    lower = torch.where(x0 < -1 + half, torch.zeros_like(x0), normal.cdf(x0 - half))
    return -(upper - lower).log().mean(dim=1) / math.log(2)


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def test_the_bound_lies_above_the_models_exact_nll_and_close_to_it():
    """E[bound] >= −log₂ p_θ(x0)/D for every x0, the gap being KL(q(x_1:T | x0) ‖ p_θ(x_1:T | x0)). A schedule
    whose first noise level (σ_0 = 0.33) exceeds the bins' half-width (1/16): the continuous model then
    nearly matches the posterior of the discrete data and the gap is small (with σ_0 = 0.01 it is 5 bits)."""
    schedule = DDPMSchedule(50, "linear", 0.1, 0.3)
    repeats = 128  # noise draws per point: each term is a one-draw estimate of an expectation over x_t
    x0 = _grid_points(4, torch.Generator().manual_seed(0)).repeat_interleave(repeats, dim=0)
    bound = variational_bound(DATA.eps_model(schedule), x0, schedule, num_bins=NUM_BINS,
                              generator=torch.Generator().manual_seed(1))
    nll = _exact_nll_bits_per_dim(schedule, x0)
    gaps = []
    for point in range(4):
        rows = slice(repeats * point, repeats * (point + 1))
        mean, stderr = _mean_and_stderr(bound[rows])
        gaps.append(mean - float(nll[rows][0]))
        assert gaps[-1] > -3 * stderr, (point, mean, float(nll[rows][0]), stderr)
    assert sum(gaps) / 4 < 0.3  # bits/dim, against an NLL of about 3


def test_monte_carlo_estimate_is_unbiased():
    """Mean of the stratified K-term estimate over many draws vs the exact sum, within a few standard errors
    (about 0.06 bits/dim here, against KL terms summing to about 0.26)."""
    schedule = DDPMSchedule(50, "linear", 0.1, 0.3)
    x0 = _grid_points(1, torch.Generator().manual_seed(2)).repeat(4096, 1)
    eps_model = DATA.eps_model(schedule)
    exact = variational_bound(eps_model, x0, schedule, num_bins=NUM_BINS, generator=torch.Generator().manual_seed(3))
    estimate = variational_bound(eps_model, x0, schedule, num_bins=NUM_BINS, sampled_timesteps=3,
                                 generator=torch.Generator().manual_seed(4))
    (exact_mean, exact_se), (estimate_mean, estimate_se) = _mean_and_stderr(exact), _mean_and_stderr(estimate)
    assert estimate_se > exact_se  # the timestep draws add variance ...
    assert abs(estimate_mean - exact_mean) < 4 * math.hypot(exact_se, estimate_se)  # ... but no bias


def test_strata_cover_the_kl_terms_once_and_k_equal_to_t_minus_one_is_every_timestep():
    generator = torch.Generator().manual_seed(5)
    # edges 1 + 9(k/4)²: strata {1}, {2}, {3, 4, 5}, {6, 7, 8, 9}
    timesteps, weights = _timesteps_and_weights(10, 1000, 4, generator)
    assert timesteps.shape == weights.shape == (1000, 5)
    assert (timesteps[:, 0] == 0).all() and weights[0].tolist() == [1.0, 1.0, 1.0, 3.0, 4.0]
    for column, stratum in enumerate([{1}, {2}, {3, 4, 5}, {6, 7, 8, 9}], start=1):
        assert set(timesteps[:, column].tolist()) == stratum  # every member drawn, nothing outside
    timesteps, weights = _timesteps_and_weights(9, 3, 8, generator)
    assert (timesteps == torch.arange(9)).all() and (weights == 1).all()
    for num_timesteps, sampled in [(1000, 50), (1000, 999), (3, 2), (2, 1), (57, 13)]:
        edges = _strata_edges(num_timesteps, sampled)
        assert edges[0] == 1 and edges[-1] == num_timesteps and len(edges) == sampled + 1
        assert all(b > a for a, b in zip(edges, edges[1:]))  # K non-empty strata covering 1 … T − 1


def test_chunking_does_not_change_the_sum():
    """Each timestep's noise is its own draw, so chunks of 1, 4 or all timesteps give the same bound."""
    schedule = DDPMSchedule(9, "cosine")
    x0 = _grid_points(5, torch.Generator().manual_seed(5))
    eps_model = DATA.eps_model(schedule)
    bounds = [variational_bound(eps_model, x0, schedule, num_bins=NUM_BINS, chunk_size=chunk,
                                generator=torch.Generator().manual_seed(6)) for chunk in (1, 4, 9)]
    torch.testing.assert_close(bounds[0], bounds[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bounds[0], bounds[2], rtol=1e-12, atol=1e-12)
    assert bounds[0].dtype == torch.float64 and bounds[0].shape == (5,)


def test_the_sum_is_the_prior_kl_plus_every_per_timestep_term():
    schedule = DDPMSchedule(6)
    x0 = _grid_points(3, torch.Generator().manual_seed(7))
    eps_model = DATA.eps_model(schedule)
    bound = variational_bound(eps_model, x0, schedule, num_bins=NUM_BINS, chunk_size=4,
                              generator=torch.Generator().manual_seed(8))
    generator, expected = torch.Generator().manual_seed(8), schedule.prior_kl(x0)
    for t in range(6):
        index = torch.full((3,), t)
        x_t = schedule.add_noise(x0, torch.randn(x0.shape, generator=generator, dtype=x0.dtype), index)
        expected = expected + schedule.vb_terms(x0, x_t, index, eps_model(index, x_t), num_bins=NUM_BINS)
    torch.testing.assert_close(bound, expected, rtol=1e-12, atol=1e-12)


def test_one_timestep_is_the_prior_kl_plus_the_decoder_term_for_any_k():
    schedule = DDPMSchedule(1, "linear", 0.3, 0.3)
    x0 = _grid_points(4, torch.Generator().manual_seed(9))
    eps_model = DATA.eps_model(schedule)
    exact = variational_bound(eps_model, x0, schedule, num_bins=NUM_BINS, generator=torch.Generator().manual_seed(1))
    sampled = variational_bound(eps_model, x0, schedule, num_bins=NUM_BINS, sampled_timesteps=5,
                                generator=torch.Generator().manual_seed(1))
    index = torch.zeros(4, dtype=torch.long)
    x_t = schedule.add_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(1),
                                             dtype=x0.dtype), index)
    decoder = schedule.vb_terms(x0, x_t, index, eps_model(index, x_t), num_bins=NUM_BINS)
    torch.testing.assert_close(exact, schedule.prior_kl(x0) + decoder)
    torch.testing.assert_close(sampled, exact)


@pytest.mark.parametrize("kwargs, match", [
    ({"sampled_timesteps": 0}, "sampled_timesteps must be an integer >= 1"),
    ({"sampled_timesteps": 10}, r"exceeds the T − 1 = 9 KL terms"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"num_bins": 1}, "num_bins"),
    ({"num_bins": 256}, r"num_bins=256 values"),
    ({"variance": "learned"}, "variance"),
])
def test_bad_arguments_are_refused(kwargs, match):
    schedule = DDPMSchedule(10)
    x0 = _grid_points(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=match):
        variational_bound(DATA.eps_model(schedule), x0, schedule, **{"num_bins": NUM_BINS, **kwargs})


def test_bad_data_schedule_and_network_output_are_refused():
    schedule = DDPMSchedule(10)
    eps_model = DATA.eps_model(schedule)
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        variational_bound(eps_model, torch.full((2, 3), 2.0, dtype=torch.float64), schedule, num_bins=NUM_BINS)
    with pytest.raises(ValueError, match=r"shape \(batch, \.\.\.\)"):
        variational_bound(eps_model, torch.zeros(3, dtype=torch.float64), schedule, num_bins=NUM_BINS)
    with pytest.raises(TypeError, match="DDPMSchedule"):
        variational_bound(eps_model, torch.zeros(2, 3, dtype=torch.float64), "linear", num_bins=NUM_BINS)
    with pytest.raises(ValueError, match="eps_model must return"):
        variational_bound(lambda t, x: x[:, :2], torch.zeros(2, 3, dtype=torch.float64), schedule, num_bins=NUM_BINS)
    with pytest.raises(NonFiniteDenoiserError, match="timesteps in"):
        variational_bound(lambda t, x: x / 0, torch.zeros(2, 3, dtype=torch.float64), schedule, num_bins=NUM_BINS)
