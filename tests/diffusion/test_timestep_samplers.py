"""Timestep samplers: frequencies follow p_t, importance weights keep the loss unbiased, state resumes exactly,
DDP ranks agree, and bad input is refused with the fix."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.stats import chi2

from pynodeta.diffusion.schedules import DDPMSchedule
from pynodeta.diffusion.timestep_samplers import (
    TIMESTEP_SAMPLERS,
    LossSecondMomentSampler,
    SpeeDSampler,
    UniformSampler,
    make_timestep_sampler,
)

T = 8
LOSS_TABLE = torch.tensor([0.5, 1.0, 2.0, 4.0, 1.0, 0.25, 3.0, 0.1], dtype=torch.float64)  # ℓ_t, known


def _warmed_up(history_per_term=3, uniform_prob=0.001):
    sampler = LossSecondMomentSampler(T, history_per_term=history_per_term, uniform_prob=uniform_prob)
    for _ in range(history_per_term):
        sampler.update_with_all_losses(torch.arange(T), LOSS_TABLE)
    return sampler


def _chi_square_accepts(t, p, quantile=0.999):
    counts = torch.bincount(t, minlength=len(p)).double()
    expected = p * len(t)
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return statistic < chi2.ppf(quantile, df=len(p) - 1), statistic


def test_importance_probabilities_are_the_root_mean_square_loss_mixed_with_uniform():
    sampler = _warmed_up(uniform_prob=0.01)
    expected = 0.99 * LOSS_TABLE / LOSS_TABLE.sum() + 0.01 / T  # constant history: √E[L²] = ℓ_t
    torch.testing.assert_close(sampler.probabilities(), expected)


def test_importance_frequencies_match_p_and_weights_are_one_over_T_p():
    sampler = _warmed_up()
    t, weights = sampler.sample(40_000, generator=torch.Generator().manual_seed(0))
    p = sampler.probabilities()
    accepted, statistic = _chi_square_accepts(t, p)
    assert accepted, f"chi-square {statistic:.1f} for frequencies against p_t"
    torch.testing.assert_close(weights.double(), 1.0 / (T * p[t]), rtol=1e-6, atol=0)


def test_weighted_loss_estimate_is_unbiased_for_a_known_loss_table():
    sampler = _warmed_up(uniform_prob=0.05)
    p = sampler.probabilities()
    torch.testing.assert_close((p * LOSS_TABLE / (T * p)).sum(), LOSS_TABLE.mean())  # exact: Σ p_t ℓ_t/(T p_t)
    t, weights = sampler.sample(20_000, generator=torch.Generator().manual_seed(1))
    estimates = weights.double() * LOSS_TABLE[t]
    standard_error = float(estimates.std() / len(t) ** 0.5)
    assert abs(float(estimates.mean()) - float(LOSS_TABLE.mean())) < 4 * standard_error
    # and importance sampling earns its keep: lower variance than uniform draws of the same table
    assert float(estimates.var()) < float(LOSS_TABLE.var(unbiased=False))


def test_uniform_with_weight_one_until_every_timestep_is_warmed_up():
    sampler = LossSecondMomentSampler(T, history_per_term=2)
    sampler.update_with_all_losses(torch.arange(T - 1).repeat(2), torch.ones(2 * (T - 1)) * 5)  # t = T-1 unseen
    assert not sampler.warmed_up()
    torch.testing.assert_close(sampler.probabilities(), torch.full((T,), 1 / T, dtype=torch.float64))
    assert (sampler.sample(64, generator=torch.Generator().manual_seed(0))[1] == 1).all()


def test_history_keeps_the_last_losses_in_order_even_for_repeated_timesteps():
    sampler = LossSecondMomentSampler(T, history_per_term=3)
    sampler.update_with_all_losses(torch.tensor([2, 2, 2, 2, 2]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    torch.testing.assert_close(sampler.loss_history[2], torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64))
    assert int(sampler.loss_counts[2]) == 3 and int(sampler.loss_counts.sum()) == 3


def test_uniform_sampler_frequencies_and_unit_weights():
    t, weights = UniformSampler(T).sample(16_000, generator=torch.Generator().manual_seed(2))
    assert _chi_square_accepts(t, torch.full((T,), 1 / T, dtype=torch.float64))[0]
    assert t.dtype == torch.int64 and (weights == 1).all()


def test_importance_state_resumes_exactly_through_a_checkpoint(tmp_path):
    sampler = _warmed_up()
    sampler.update_with_all_losses(torch.tensor([0, 3]), torch.tensor([7.0, 0.5]))
    torch.save(sampler.state_dict(), tmp_path / "sampler.pt")
    resumed = LossSecondMomentSampler(T, history_per_term=3)
    resumed.load_state_dict(torch.load(tmp_path / "sampler.pt", weights_only=True))
    for s in (sampler, resumed):
        s.update_with_all_losses(torch.tensor([5, 5, 1]), torch.tensor([2.0, 9.0, 0.3]))
    first, second = (s.sample(100, generator=torch.Generator().manual_seed(3)) for s in (sampler, resumed))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with pytest.raises(ValueError, match="build it with the saved T"):
        LossSecondMomentSampler(T + 1, history_per_term=3).load_state_dict(sampler.state_dict())


def _ddp_worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        sampler = LossSecondMomentSampler(T, history_per_term=2)
        generator = torch.Generator().manual_seed(10 + rank)  # different data on each rank
        for _ in range(6):
            t = torch.randint(0, T, (5 + rank,), generator=generator)  # ragged: 5 and 6 per rank
            sampler.update_with_local_losses(t, LOSS_TABLE[t] * (1 + rank))
        torch.save(sampler.state_dict(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_keep_one_distribution_equal_to_the_single_process_update(tmp_path):
    out = str(tmp_path / "rank")
    # fork: the workers inherit the imported modules instead of importing torch again (seconds on 2 cores)
    mp.start_processes(_ddp_worker, args=(str(tmp_path / "store"), out), nprocs=2, start_method="fork")
    states = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    assert torch.equal(states[0]["loss_history"], states[1]["loss_history"])
    single = LossSecondMomentSampler(T, history_per_term=2)
    generators = [torch.Generator().manual_seed(10 + r) for r in range(2)]
    for _ in range(6):
        ts = [torch.randint(0, T, (5 + r,), generator=generators[r]) for r in range(2)]
        single.update_with_all_losses(torch.cat(ts), torch.cat([LOSS_TABLE[t] * (1 + r) for r, t in enumerate(ts)]))
    torch.testing.assert_close(states[0]["loss_history"], single.loss_history)


def test_speed_asymmetric_probabilities_and_change_aware_weights():
    schedule = DDPMSchedule(1000)
    sampler = SpeeDSampler(schedule.alphas_cumprod, k=5.0, tau=700, lam=0.6)
    p = sampler.probabilities()
    torch.testing.assert_close(p[:700], torch.full((700,), 5 / (5 * 700 + 300), dtype=torch.float64))
    torch.testing.assert_close(p[700:], torch.full((300,), 1 / (5 * 700 + 300), dtype=torch.float64))
    t, weights = sampler.sample(30_000, generator=torch.Generator().manual_seed(4))
    assert abs(float((t < 700).double().mean()) - 3500 / 3800) < 0.01
    w = sampler.loss_weights
    rate = torch.gradient(1 - schedule.alphas_cumprod)[0]
    # w_t = (1 − λ) + (2λ − 1)·(g_t − min g)/(max g − min g) below τ, 1 from τ on
    torch.testing.assert_close(w[:700], (0.4 + 0.2 * (rate - rate.min()) / (rate.max() - rate.min()))[:700])
    assert float(w[:700].max()) == pytest.approx(0.6) and (w[700:] == 1).all()
    torch.testing.assert_close(weights, w[t].float())


def test_speed_dual_sampling_mirrors_each_draw_about_the_mirror_step():
    sampler = SpeeDSampler(DDPMSchedule(1000).alphas_cumprod, dual_sampling=True)
    t, _ = sampler.sample(10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(t[6:], (t[:4] - sampler.mirror_step).abs())


def test_factory_builds_each_sampler_by_name():
    schedule = DDPMSchedule(50)
    assert TIMESTEP_SAMPLERS == ("uniform", "importance", "speed", "adaptive")
    assert isinstance(make_timestep_sampler("uniform", 50), UniformSampler)
    assert make_timestep_sampler("importance", 50, history_per_term=4).history_per_term == 4
    assert make_timestep_sampler("speed", 50, alphas_cumprod=schedule.alphas_cumprod).tau == 35
    assert make_timestep_sampler("adaptive", 50, in_channels=1).num_timesteps == 50
    with pytest.raises(ValueError, match="timestep_sampler must be one of"):
        make_timestep_sampler("loss-second-moment", 50)
    with pytest.raises(ValueError, match="alphas_cumprod=schedule.alphas_cumprod"):
        make_timestep_sampler("speed", 50)
    with pytest.raises(ValueError, match="needs in_channels"):
        make_timestep_sampler("adaptive", 50)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_number_of_timesteps_is_refused(bad):
    with pytest.raises(ValueError, match="num_timesteps"):
        LossSecondMomentSampler(bad)
    with pytest.raises(ValueError, match="num_timesteps"):
        UniformSampler(bad)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_uniform_prob_outside_zero_one_is_refused(bad):
    with pytest.raises(ValueError, match=r"uniform_prob must lie in \[0, 1\)"):
        LossSecondMomentSampler(T, uniform_prob=bad)


def test_bad_losses_are_refused_with_the_fix():
    sampler = LossSecondMomentSampler(T)
    with pytest.raises(ValueError, match="losses must have t's shape"):
        sampler.update_with_local_losses(torch.arange(4), torch.ones(4, 2))
    with pytest.raises(ValueError, match="NaN or Inf: skip this update"):
        sampler.update_with_local_losses(torch.arange(2), torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\)"):
        sampler.update_with_all_losses(torch.tensor([T]), torch.ones(1))
    with pytest.raises(ValueError, match="integer tensor"):
        sampler.update_with_all_losses(torch.tensor([1.0]), torch.ones(1))
    with pytest.raises(ValueError, match="batch_size"):
        sampler.sample(0)


def test_bad_speed_parameters_name_the_argument():
    alphas = DDPMSchedule(100).alphas_cumprod
    with pytest.raises(ValueError, match="k must be >= 1"):
        SpeeDSampler(alphas, k=0.5)
    with pytest.raises(ValueError, match="k must be >= 1 and finite"):  # inf made the probabilities NaN
        SpeeDSampler(alphas, k=float("inf"))
    with pytest.raises(ValueError, match=r"lam must lie in \[0.5, 1\]"):
        SpeeDSampler(alphas, lam=0.3)
    with pytest.raises(ValueError, match="tau must be an integer"):
        SpeeDSampler(alphas, tau=0)
    with pytest.raises(ValueError, match="alphas_cumprod must be"):
        SpeeDSampler(torch.zeros(10))
