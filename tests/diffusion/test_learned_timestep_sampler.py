"""Seed 004's learned sampler: exact uniform start, bin likelihood, learning from a synthetic reward, resume,
and the training-loop updater (same-noise rewards, F-regression selection, queue)."""

import pytest
import torch
from scipy.stats import beta as beta_distribution
from sklearn.feature_selection import SelectKBest, f_regression

from pynodeta.diffusion.learned_timestep_sampler import LearnedTimestepSampler
from pynodeta.diffusion.schedules import DDPMSchedule
from pynodeta.diffusion.timestep_samplers import make_timestep_sampler
from pynodeta.train.adaptive_timesteps import (
    AdaptiveTimestepUpdater,
    TimestepSamplerTraining,
    ddpm_vb_terms,
    select_by_f_regression,
)
from tests.equal_states import assert_equal_states

T = 50


def _images(batch=32, seed=0):
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _set_concentrations(sampler, alpha, beta):
    inverse_softplus = lambda y: torch.log(torch.expm1(torch.tensor(y - 1e-5)))  # noqa: E731
    with torch.no_grad():
        sampler.policy.head.bias.copy_(torch.stack([inverse_softplus(alpha), inverse_softplus(beta)]))


def test_starts_exactly_uniform_and_draws_follow_the_discretised_uniform():
    sampler, x0 = LearnedTimestepSampler(T, 1), _images(64)
    alpha, beta = sampler.policy(x0)
    torch.testing.assert_close(alpha, torch.ones(64))
    torch.testing.assert_close(beta, torch.ones(64))
    t, weights = sampler.sample(64, x0=x0, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.min() >= 0 and t.max() < T and (weights == 1).all()
    # round(u (T − 1)), u ~ U(0, 1): interior bins have mass 1/(T − 1), the two edge bins half that
    many = _images(1).expand(5000, 1, 8, 8)
    draws = sampler.sample(5000, x0=many, generator=torch.Generator().manual_seed(1))[0]
    p = torch.full((T,), 1 / (T - 1), dtype=torch.float64)
    p[0] = p[-1] = 0.5 / (T - 1)
    counts = torch.bincount(draws, minlength=T).double()
    statistic = float(((counts - p * len(draws)) ** 2 / (p * len(draws))).sum())
    assert statistic < 85.4, statistic  # chi-square 0.999 quantile for 49 degrees of freedom


def test_log_prob_is_the_beta_mass_of_each_rounding_bin():
    sampler, x0 = LearnedTimestepSampler(T, 1), _images(T)
    _set_concentrations(sampler, 2.0, 5.0)
    t = torch.arange(T)
    edges = ((t - 0.5) / (T - 1)).clamp(0, 1), ((t + 0.5) / (T - 1)).clamp(0, 1)
    exact = beta_distribution.cdf(edges[1].numpy(), 2.0, 5.0) - beta_distribution.cdf(edges[0].numpy(), 2.0, 5.0)
    probabilities = sampler.log_prob(x0, t).exp().double().detach()
    torch.testing.assert_close(probabilities, torch.from_numpy(exact), rtol=2e-3, atol=1e-6)
    assert float(probabilities.sum()) == pytest.approx(1.0, abs=1e-3)


def test_moves_mass_towards_timesteps_that_earn_reward():
    torch.manual_seed(0)
    sampler, x0 = LearnedTimestepSampler(T, 1, width=8, hidden=16), _images(32)
    before = sampler.summary(x0)["t_mean"]
    for step in range(60):
        t, _ = sampler.sample(32, x0=x0, generator=torch.Generator().manual_seed(step))
        sampler.reinforce(x0, t, (t >= 0.75 * T).double())  # synthetic reward: late timesteps only
    after = sampler.summary(x0)
    assert before == pytest.approx((T - 1) / 2)
    assert after["t_mean"] > 0.75 * (T - 1) and after["t_q10"] > 0.5 * (T - 1), after


def test_policy_conditions_on_x0():
    # Images of +1 earn reward at late t, images of −1 at early t: the policy must tell them apart.
    torch.manual_seed(1)
    sampler = LearnedTimestepSampler(T, 1, width=8, hidden=16)
    x0 = torch.cat([torch.ones(16, 1, 8, 8), -torch.ones(16, 1, 8, 8)])
    late = torch.cat([torch.ones(16), torch.zeros(16)]).bool()
    for step in range(80):
        t, _ = sampler.sample(32, x0=x0, generator=torch.Generator().manual_seed(step))
        sampler.reinforce(x0, t, torch.where(late, t >= T // 2, t < T // 2).double())
    assert sampler.summary(x0[:16])["t_mean"] > sampler.summary(x0[16:])["t_mean"] + 0.3 * T


def test_state_resumes_exactly(tmp_path):
    sampler, x0 = LearnedTimestepSampler(T, 1), _images(16)
    for step in range(3):
        t, _ = sampler.sample(16, x0=x0, generator=torch.Generator().manual_seed(step))
        sampler.reinforce(x0, t, t.double() / T)
    torch.save(sampler.state_dict(), tmp_path / "sampler.pt")
    resumed = LearnedTimestepSampler(T, 1)
    resumed.load_state_dict(torch.load(tmp_path / "sampler.pt", weights_only=True))
    t = torch.arange(16) * 3
    losses = [s.reinforce(x0, t, t.double() / T) for s in (sampler, resumed)]
    assert torch.equal(losses[0], losses[1])
    draws = [s.sample(16, x0=x0, generator=torch.Generator().manual_seed(9))[0] for s in (sampler, resumed)]
    assert torch.equal(draws[0], draws[1])


def test_sampling_with_a_generator_is_reproducible_and_leaves_the_global_rng_alone():
    sampler, x0 = LearnedTimestepSampler(T, 1), _images(8)
    state = torch.get_rng_state()
    first = sampler.sample(8, x0=x0, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, sampler.sample(8, x0=x0, generator=torch.Generator().manual_seed(3))[0])


def test_bad_input_names_the_argument_and_the_fix():
    sampler, x0 = LearnedTimestepSampler(T, 1), _images(4)
    with pytest.raises(ValueError, match="x0 is required"):
        sampler.sample(4)
    with pytest.raises(ValueError, match=r"x0 must have shape \(batch_size=5"):
        sampler.sample(5, x0=x0)
    with pytest.raises(ValueError, match="reward contains NaN"):
        sampler.reinforce(x0, torch.arange(4), torch.tensor([1.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(ValueError, match="reward must be a scalar or have t's shape"):
        sampler.reinforce(x0, torch.arange(4), torch.ones(3))
    with pytest.raises(ValueError, match="num_timesteps"):
        LearnedTimestepSampler(0, 1)
    with pytest.raises(ValueError, match="in_channels"):
        LearnedTimestepSampler(T, 0)
    for bad in ({"lr": float("inf")}, {"entropy_coef": float("inf")}, {"lr": float("nan")}):
        name = next(iter(bad))  # inf used to pass and make the policy NaN at its first update
        with pytest.raises(ValueError, match=rf"and finite.*got .*{name}={bad[name]}"):
            LearnedTimestepSampler(T, 1, **bad)


def test_f_regression_selection_matches_sklearn_and_finds_the_predictive_columns():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(5, 40, generator=generator, dtype=torch.float64)
    target = features.sum(dim=1)
    ours = select_by_f_regression(features, target, 3)
    theirs = SelectKBest(f_regression, k=3).fit(features.numpy(), target.numpy()).get_support(indices=True)
    assert ours.tolist() == theirs.tolist()
    features[:, [4, 17, 30]] = target[:, None] * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert select_by_f_regression(features, target, 3).tolist() == [4, 17, 30]


class _ToyBound:
    """L_t(x0, noise) = (θ − t/T)²·mean(noise²)·(1 + mean(x0²)): θ is the 'model', changed by a 'step'."""

    def __init__(self):
        self.theta = 0.0

    def __call__(self, x0, t, noise):
        scale = noise.pow(2).flatten(1).mean(1) * (1 + x0.pow(2).flatten(1).mean(1))
        return (self.theta - t.double() / T) ** 2 * scale.double()


def test_updater_rewards_the_bound_drop_at_the_selected_steps_with_the_same_noise():
    bound, sampler = _ToyBound(), LearnedTimestepSampler(T, 1)
    updater = AdaptiveTimestepUpdater(sampler, bound, update_every=4, queue_length=5, num_selected=3)
    x0, generator = _images(8), torch.Generator().manual_seed(0)
    t, _ = sampler.sample(8, x0=x0, generator=generator)
    updater.before_optimizer_step(1, x0, generator)  # not due: nothing recorded
    assert updater.after_optimizer_step(x0, t) is None
    updater.before_optimizer_step(4, x0, generator)  # due, model unchanged: same noise ⇒ exactly zero reward
    assert updater.after_optimizer_step(x0, t)["sampler/reward_mean"] == 0.0
    for step, theta in zip(range(8, 40, 4), torch.linspace(0.1, 0.9, 8).tolist()):
        updater.before_optimizer_step(step, x0, generator)
        pending, selected = updater._pending, updater.selected.clone()
        bound.theta = theta
        logs = updater.after_optimizer_step(x0, t)
        noise = pending["batch_noise"]
        expected = sum(pending["batch_before"][:, i] - bound(x0, torch.full((8,), int(tau)), noise[i])
                       for i, tau in enumerate(selected))
        assert logs["sampler/reward_mean"] == pytest.approx(float(expected.mean()))
    assert len(updater.queue) == 5 and updater.selected.shape == (3,)
    features = torch.stack([row for row, _ in updater.queue])
    totals = torch.stack([total for _, total in updater.queue])
    assert torch.equal(updater.selected, select_by_f_regression(features, totals, 3))
    assert logs["sampler/overhead_s"] > 0 and {"sampler/t_mean", "sampler/t_q90"} <= set(logs)


def test_updater_state_resumes_and_bad_settings_are_refused():
    sampler = LearnedTimestepSampler(T, 1)
    updater = AdaptiveTimestepUpdater(sampler, _ToyBound(), update_every=1)
    updater.queue.append((torch.ones(T, dtype=torch.float64), torch.tensor(float(T))))
    updater.selected = torch.tensor([1, 2, 3])
    copy = AdaptiveTimestepUpdater(LearnedTimestepSampler(T, 1), _ToyBound(), update_every=1)
    copy.load_state_dict(updater.state_dict())
    assert torch.equal(copy.selected, updater.selected) and len(copy.queue) == 1
    with pytest.raises(ValueError, match="queue_length must be an integer >= 3"):
        AdaptiveTimestepUpdater(sampler, _ToyBound(), queue_length=2)
    with pytest.raises(ValueError, match="num_selected must be <= T"):
        AdaptiveTimestepUpdater(sampler, _ToyBound(), num_selected=T + 1)


def test_ddpm_vb_terms_uses_the_schedule_and_restores_the_training_mode():
    schedule = DDPMSchedule(T)
    model = torch.nn.Sequential(torch.nn.Dropout(0.5))
    eps_model = lambda t, x: model(x)  # noqa: E731
    eps_model.eval, eps_model.train, eps_model.training = model.eval, model.train, True
    model.train()
    x0, noise, t = _images(4).clamp(-1, 1), _images(4, seed=1), torch.tensor([0, 5, 20, 49])
    terms = ddpm_vb_terms(eps_model, schedule, num_bins=17)(x0, t, noise)
    x_t = schedule.add_noise(x0, noise, t)
    torch.testing.assert_close(terms, schedule.vb_terms(x0, x_t, t, x_t, num_bins=17))  # dropout off: ε̂ = x_t
    assert model.training


def _tiny_training(sampler_name, steps, update_every=2):
    torch.manual_seed(0)
    schedule = DDPMSchedule(20)
    network = torch.nn.Conv2d(1, 1, 3, padding=1)
    eps_model = lambda t, x: network(x) * (1 + t[:, None, None, None] / 20)  # noqa: E731
    eps_model.eval, eps_model.train, eps_model.training = network.eval, network.train, True
    sampler = make_timestep_sampler(sampler_name, 20, in_channels=1)
    options = {"update_every": update_every} if sampler_name == "adaptive" else {}
    training = TimestepSamplerTraining(sampler, ddpm_vb_terms(eps_model, schedule, 17), **options)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    logged = []
    for step in range(1, steps + 1):
        x0 = _images(8, seed=step).clamp(-1, 1)
        t, weights = sampler.sample(8, x0=x0, generator=torch.Generator().manual_seed(step))
        noise = torch.randn_like(x0)
        per_sample = (eps_model(t, schedule.add_noise(x0, noise, t)) - noise).pow(2).flatten(1).mean(1)
        training.after_loss(step, x0, t, per_sample)
        optimizer.zero_grad()
        (weights * per_sample).mean().backward()
        optimizer.step()
        logs = training.after_optimizer_step()
        if logs is not None:
            logged.append(step)
    return training, logged


def test_sampler_training_updates_the_adaptive_policy_every_f_s_steps_and_resumes():
    training, logged = _tiny_training("adaptive", steps=6)
    assert logged == [2, 4, 6] and len(training.updater.queue) == 3
    assert training.sampler.policy.head.weight.abs().sum() > 0  # the policy moved off its zero-weight start
    copy, _ = _tiny_training("adaptive", steps=0)
    copy.load_state_dict(training.state_dict())
    for ours, theirs in zip(training.sampler.policy.parameters(), copy.sampler.policy.parameters()):
        assert torch.equal(ours, theirs)
    assert torch.equal(copy.updater.selected, training.updater.selected)


def test_sampler_training_feeds_loss_aware_samplers_every_loss():
    training, logged = _tiny_training("importance", steps=3)
    assert logged == [] and int(training.sampler.loss_counts.sum()) == 3 * 8
    with pytest.raises(ValueError, match="apply to the adaptive sampler only"):
        TimestepSamplerTraining(training.sampler, update_every=3)
    with pytest.raises(ValueError, match="needs vb_terms"):
        TimestepSamplerTraining(LearnedTimestepSampler(T, 1))


def _diffusion_module(sampler_name):
    from pynodeta.diffusion import DDPMSchedule
    from pynodeta.models.diffusion.ddpm_unet import DDPMUNet
    from pynodeta.train import DDPMObjective, DiffusionModule

    torch.manual_seed(0)
    network = DDPMUNet(image_size=8, in_channels=1, channels=8, channel_mult=(1,), num_res_blocks=1,
                       attention_resolutions=(), dropout=0.0, norm_groups=4)
    objective = DDPMObjective(DDPMSchedule(20), timestep_sampler=sampler_name, num_bins=17)
    return DiffusionModule(network, objective, averaging="none")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # no Trainer here: the sampler's logs go nowhere
@pytest.mark.parametrize("sampler_name", ["adaptive", "importance"])
def test_diffusion_module_drives_its_sampler_and_checkpoints_it(sampler_name):
    module = _diffusion_module(sampler_name)
    optimizer = torch.optim.SGD(module.model.parameters(), lr=0.05)
    module.train()
    for step in range(3):  # without a Trainer global_step stays 0, so every step is an update step
        x0 = _images(8, seed=step).clamp(-1, 1)
        optimizer.zero_grad()
        module.objective.loss(module.model, x0, step=module.global_step).mean().backward()
        optimizer.step()
        module.on_train_batch_end(None, x0, step)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    resumed = _diffusion_module(sampler_name)
    resumed.on_load_checkpoint(checkpoint)
    ours, theirs = module.objective, resumed.objective
    if sampler_name == "adaptive":
        assert len(ours.sampler_training.updater.queue) == 3
        assert ours.timestep_sampler.policy.head.weight.abs().sum() > 0
        policies = ours.timestep_sampler.policy, theirs.timestep_sampler.policy
        for mine, resumed_one in zip(policies[0].parameters(), policies[1].parameters()):
            assert torch.equal(mine, resumed_one)
        assert len(theirs.sampler_training.updater.queue) == 3
    else:
        assert int(ours.timestep_sampler.loss_counts.sum()) == 3 * 8
        assert torch.equal(theirs.timestep_sampler.loss_history, ours.timestep_sampler.loss_history)


def _ddp_adaptive_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same network on both ranks, as DDP starts
        schedule = DDPMSchedule(20)
        network = torch.nn.Conv2d(1, 1, 3, padding=1)
        eps_model = lambda t, x: network(x) * (1 + t[:, None, None, None] / 20)  # noqa: E731
        eps_model.eval, eps_model.train, eps_model.training = network.eval, network.train, True
        sampler = make_timestep_sampler("adaptive", 20, in_channels=1)
        training = TimestepSamplerTraining(sampler, ddpm_vb_terms(eps_model, schedule, 17), update_every=2)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
        generator = torch.Generator().manual_seed(100 + rank)  # each rank: its own images, draws and probes
        for step in range(1, 9):
            x0 = _images(8, seed=10 * step + rank).clamp(-1, 1)
            t, weights = sampler.sample(8, x0=x0, generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            per_sample = (eps_model(t, schedule.add_noise(x0, noise, t)) - noise).pow(2).flatten(1).mean(1)
            training.after_loss(step, x0, t, per_sample)
            optimizer.zero_grad()
            (weights * per_sample).mean().backward()
            for parameter in network.parameters():  # what DDP does to the network's gradients
                dist.all_reduce(parameter.grad)
                parameter.grad /= 2
            optimizer.step()
            training.after_optimizer_step()
        torch.save({"training": training.state_dict(), "baseline": sampler.baseline}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_keep_one_adaptive_sampler_policy_queue_and_selected_timesteps(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "rank")
    mp.start_processes(_ddp_adaptive_worker, args=(str(tmp_path / "store"), out), nprocs=2, start_method="fork")
    states = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    assert states[0]["baseline"] is not None and states[0]["baseline"] == states[1]["baseline"]
    for state in states:  # the time each rank spent is its own
        state["training"]["updater"].pop("overhead_seconds")
    assert_equal_states(states[0]["training"], states[1]["training"], "training")
    assert len(states[0]["training"]["updater"]["queue"]) == 4  # 4 updates in 8 steps: S was re-selected

