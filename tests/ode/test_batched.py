"""Per-sample step sizes (solve(..., batched=True)): accuracy, batch independence, statistics, controllers."""

import pytest
import torch

import pynodeta as pn
from pynodeta.ode import ADAPTIVE_METHODS, PIController
from pynodeta.ode.batched import BatchedSolveStats
from pynodeta.ode.problems import MLPField

F64 = torch.float64


def decay(rates: torch.Tensor):
    """dy/dt = -rate_b * y cos(t), per sample b: y(t) = y(t0) exp(-rate_b (sin t - sin t0))."""

    def f(t, y):
        return -rates[:, None] * y * torch.cos(t)[:, None]

    return f


def decay_exact(y0, rates, t):
    t = t.expand(y0.shape[0], -1) if t.ndim == 1 else t
    return y0[:, None, :] * torch.exp(-rates[:, None, None] * (torch.sin(t) - torch.sin(t[:, :1]))[:, :, None])


def van_der_pol(mus: torch.Tensor):
    """x'' = mu_b (1 - x^2) x' - x per sample: stiffness grows with mu_b."""

    def f(t, y):
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, mus * (1 - x**2) * v - x], dim=1)

    return f


RATES = torch.tensor([0.1, 1.0, 5.0, 3.0], dtype=F64)
Y0 = torch.tensor([[1.0, -2.0], [1e-3, 4.0], [50.0, 0.5], [1.0, 1.0]], dtype=F64)
# each sample its own times: forward, backward in time, short, and a long span
T_PER_SAMPLE = torch.tensor([[0.0, 0.5, 1.0, 2.0], [2.0, 1.5, 0.2, 0.0], [0.0, 0.01, 0.02, 0.05],
                             [-1.0, 0.0, 1.5, 3.0]], dtype=F64)


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_every_adaptive_method_matches_closed_form_per_sample(method):
    order = pn.METHODS[method].order
    tol = {2: 1e-4, 3: 1e-6}.get(order, 1e-8)  # low orders need many steps for tight tolerances
    sol = pn.solve(decay(RATES), Y0, T_PER_SAMPLE, method=method, controller=pn.IController(rtol=tol, atol=tol * 1e-2),
                   batched=True)
    exact = decay_exact(Y0, RATES, T_PER_SAMPLE)
    assert sol.ys.shape == (4, 4, 2)
    assert torch.allclose(sol.ys, exact, rtol=3000 * tol, atol=tol)
    assert torch.equal(sol.ys[:, 0], Y0)


def test_shared_times_give_batch_time_layout():
    t = torch.linspace(0, 2, 7, dtype=F64)
    sol = pn.solve(decay(RATES), Y0, t, controller=pn.IController(rtol=1e-9, atol=1e-11), batched=True)
    assert sol.ys.shape == (4, 7, 2) and sol.t is t
    assert torch.allclose(sol.ys, decay_exact(Y0, RATES, t), rtol=1e-6, atol=1e-10)


def _solo_equals_batch(func_of, params, y0, t, **kwargs):
    batch = pn.solve(func_of(params), y0, t, batched=True, **kwargs)
    for b in range(y0.shape[0]):
        t_b = t[b : b + 1] if t.ndim == 2 else t
        alone = pn.solve(func_of(params[b : b + 1]), y0[b : b + 1], t_b, batched=True, **kwargs)
        assert torch.equal(alone.ys[0], batch.ys[b]), f"sample {b} depends on its batch"
        for name in ("nfe_per_sample", "n_steps_per_sample", "n_accepted_per_sample"):
            assert getattr(alone.stats, name)[0] == getattr(batch.stats, name)[b], name
    return batch


@pytest.mark.parametrize("controller", [pn.IController, pn.PIController])
def test_each_sample_is_independent_of_its_batch_exactly(controller):
    """Very different stiffness (van der Pol mu 0.1 .. 30) and scales: solving a sample alone gives the
    same bits and the same per-sample statistics as solving it inside the batch."""
    mus = torch.tensor([0.1, 3.0, 30.0, 0.1], dtype=F64)
    y0 = torch.tensor([[2.0, 0.0], [1e-3, 1e-3], [2.0, 0.0], [0.1, 0.2]], dtype=F64)
    t = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 0.5, 2.5, 3.0], [0.0, 0.1, 1.0, 3.0], [3.0, 2.0, 1.0, 0.0]],
                     dtype=F64)
    kwargs = dict(controller=controller(rtol=1e-6, atol=1e-8))
    batch = _solo_equals_batch(van_der_pol, mus, y0, t, **kwargs)
    nfe = batch.stats.nfe_per_sample
    assert nfe[2] > 3 * nfe[0], f"the stiff sample should take many more evaluations: {nfe.tolist()}"
    _solo_equals_batch(decay, RATES, Y0, torch.linspace(0, 3, 5, dtype=F64), **kwargs)


def test_independence_with_a_neural_field():
    """A matmul-based field: a sample's row of a batched matmul may differ from its solo matmul by an ulp (BLAS
    blocks by batch size), so batch and solo agree to that round-off as the flow carries it (far below the
    tolerance), with the same steps."""
    field = MLPField(dim=2, hidden=16, seed=3, dtype=F64)

    def func(t, y):
        return field(t[:, None], y)

    scales = torch.logspace(-2, 1, 6, dtype=F64)[:, None]
    y0 = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * scales
    t = torch.stack([torch.linspace(0, 1 + i, 4, dtype=F64) for i in range(6)])
    batch = pn.solve(func, y0, t, controller=pn.IController(rtol=1e-7, atol=1e-9), batched=True)
    for b in range(6):
        alone = pn.solve(func, y0[b : b + 1], t[b : b + 1], controller=pn.IController(rtol=1e-7, atol=1e-9),
                         batched=True)
        assert torch.allclose(alone.ys[0], batch.ys[b], rtol=0, atol=1e-10)
        assert alone.stats.nfe_per_sample[0] == batch.stats.nfe_per_sample[b]


def test_finished_samples_stop_and_statistics_add_up():
    """A sample with a short span stops early: it costs fewer evaluations and its state does not move
    while the others go on; the aggregate counts are the per-sample sums."""
    t = torch.tensor([[0.0, 0.1], [0.0, 5.0]], dtype=F64)
    sol = pn.solve(decay(RATES[:2]), Y0[:2], t, controller=pn.IController(rtol=1e-8, atol=1e-10), batched=True)
    stats = sol.stats
    assert isinstance(stats, BatchedSolveStats) and stats.nfe_per_sample.shape == (2,)
    assert stats.nfe_per_sample[0] < stats.nfe_per_sample[1]
    assert stats.n_steps == int(stats.n_steps_per_sample.sum())
    assert stats.n_accepted + stats.n_rejected == stats.n_steps
    assert torch.equal(stats.n_rejected_per_sample, stats.n_steps_per_sample - stats.n_accepted_per_sample)
    # dopri5 is FSAL: 2 evaluations to choose the first step, then 6 per trial step
    assert torch.equal(stats.nfe_per_sample, 2 + 6 * stats.n_steps_per_sample)
    # func is called on the whole batch each time, so the call count is the busiest sample's NFE
    assert stats.nfe == int(stats.nfe_per_sample.max())


def test_step_counts_of_long_solves_add_up_with_and_without_a_step_limit():
    """Hundreds of steps per sample (the counts are summed in blocks of iterations unless a step limit
    needs them every step): both ways give the same counts, and they match the evaluations made."""
    mus = torch.tensor([0.5, 5.0, 20.0], dtype=F64)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [2.0, -1.0]], dtype=F64)
    t = torch.tensor([0.0, 9.0], dtype=F64)
    free = pn.solve(van_der_pol(mus), y0, t, controller=pn.IController(rtol=1e-9, atol=1e-11), batched=True)
    limited = pn.solve(van_der_pol(mus), y0, t, controller=pn.IController(rtol=1e-9, atol=1e-11), batched=True,
                       max_steps=10**6)
    stats = free.stats
    assert int(stats.n_steps_per_sample.min()) > 100 and bool((stats.n_rejected_per_sample > 0).any())
    for name in ("n_steps_per_sample", "n_accepted_per_sample", "nfe_per_sample"):
        assert torch.equal(getattr(stats, name), getattr(limited.stats, name)), name
    assert torch.equal(stats.nfe_per_sample, 2 + 6 * stats.n_steps_per_sample)
    assert stats.nfe == int(stats.nfe_per_sample.max())
    assert torch.equal(free.ys, limited.ys)


def test_a_batch_of_one_agrees_with_the_shared_step_mode():
    t = torch.linspace(0, 2, 5, dtype=F64)
    shared = pn.solve(lambda tt, y: -RATES[2] * y * torch.cos(tt), Y0[2], t,
                      controller=pn.IController(rtol=1e-9, atol=1e-11))
    batched = pn.solve(decay(RATES[2:3]), Y0[2:3], t, controller=pn.IController(rtol=1e-9, atol=1e-11), batched=True)
    assert torch.allclose(batched.ys[0], shared.ys, rtol=1e-7)
    assert abs(int(batched.stats.nfe_per_sample[0]) - shared.stats.nfe) <= 0.1 * shared.stats.nfe


def test_func_receives_per_sample_times_inside_each_span():
    seen = []

    def func(t, y):
        assert t.shape == (3,) and t.dtype == y.dtype
        seen.append(t.clone())
        return -y

    t = torch.tensor([[0.0, 1.0], [2.0, 1.0], [-3.0, -2.5]], dtype=F64)
    pn.solve(func, Y0[:3], t, batched=True)
    times = torch.stack(seen)
    low, high = t.min(dim=1).values, t.max(dim=1).values
    assert ((times >= low) & (times <= high)).all()


def test_controller_sugar_and_typed_parts_agree():
    t = torch.linspace(0, 2, 3, dtype=F64)
    a = pn.solve(decay(RATES), Y0, t, **pn.SolverSettings.from_arguments(controller="pi", rtol=1e-6, atol=1e-9,
                                                                        batched=True))
    b = pn.solve(decay(RATES), Y0, t, controller=PIController(rtol=1e-6, atol=1e-9), batched=True)
    c = pn.solve(decay(RATES), Y0, t, controller=pn.IController(rtol=1e-6, atol=1e-9), batched=True)
    assert torch.equal(a.ys, b.ys)
    assert not torch.equal(a.stats.n_steps_per_sample, c.stats.n_steps_per_sample)  # PI is a different rule


def test_settings_bundle_carries_batched():
    settings = pn.SolverSettings(batched=True, controller=pn.IController(rtol=1e-8, atol=1e-10))
    sol = pn.solve(decay(RATES), Y0, T_PER_SAMPLE, **settings)
    assert isinstance(sol.stats, BatchedSolveStats) and sol.ys.shape == (4, 4, 2)
    assert pn.SolverSettings.from_arguments(batched=True, rtol=1e-5).batched


def test_user_norm_is_per_sample():
    calls = []

    def max_norm(x):
        calls.append(x.shape)
        return x.abs().flatten(1).amax(dim=1)

    sol = pn.solve(decay(RATES), Y0, T_PER_SAMPLE, batched=True, controller=pn.IController(norm=max_norm))
    assert all(shape == Y0.shape for shape in calls)
    assert torch.allclose(sol.ys, decay_exact(Y0, RATES, T_PER_SAMPLE), rtol=1e-4, atol=1e-6)


def test_max_steps_names_the_limit():
    with pytest.raises(pn.MaxStepsReachedError, match="max_num_steps=5"):
        pn.solve(decay(RATES), Y0, T_PER_SAMPLE, batched=True, controller=pn.IController(rtol=1e-10, atol=1e-12),
                 max_steps=5)


def test_ode_block_with_per_sample_steps_keeps_its_layout():
    from pynodeta.models import ODEBlock

    field = MLPField(dim=2, hidden=8, seed=1, dtype=F64)
    block = ODEBlock(_PerSampleTime(field), t_span=(0.0, 1.0), solver=pn.SolverSettings(
        batched=True, controller=pn.IController(rtol=1e-6, atol=1e-8)))
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    out = block(x)
    shared = ODEBlock(_PerSampleTime(field), t_span=(0.0, 1.0), rtol=1e-6, atol=1e-8, adjoint=False)(x)
    assert out.shape == (5, 2) and torch.allclose(out, shared, rtol=1e-4, atol=1e-6)
    assert block.last_stats.nfe_per_sample.shape == (5,)


class _PerSampleTime(torch.nn.Module):
    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, t, y):
        return self.field(t.reshape(-1, 1).expand(y.shape[0], 1), y)
