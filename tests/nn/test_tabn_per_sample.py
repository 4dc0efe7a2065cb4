"""TA-BN at per-sample times: train mode (batch statistics, own γ/β, shared running-statistics update) and
inside a per-sample-step solve (solve(..., batched=True))."""

import torch

import pynodeta as pn
from pynodeta.nn import TABatchNorm1d, TABatchNorm2d

from .nn_testing import randomised


def test_train_mode_with_equal_per_sample_times_is_the_scalar_update():
    torch.manual_seed(0)
    scalar, per_sample = randomised(TABatchNorm2d(3, M=5)), TABatchNorm2d(3, M=5)
    per_sample.load_state_dict(scalar.state_dict())
    x = torch.randn(6, 3, 2, 2) * 2 + 1
    y_scalar = scalar(0.37, x)
    y_per_sample = per_sample(torch.full((6,), 0.37), x)
    torch.testing.assert_close(y_per_sample, y_scalar)
    torch.testing.assert_close(per_sample.running_mean, scalar.running_mean)
    torch.testing.assert_close(per_sample.running_var, scalar.running_var)


def test_train_mode_uses_batch_statistics_and_each_samples_own_affine():
    """Eq. 7 per sample for γ, β; one set of batch statistics; grid point m moves with rate η·mean_b ω_bm."""
    torch.manual_seed(1)
    layer = randomised(TABatchNorm1d(2, M=4))
    before_mean = layer.running_mean.clone()
    x = torch.randn(4, 2) * 3
    t = torch.tensor([0.0, 0.1, 0.6, 1.0])  # grid spacing 0.25: points 0; 0/1 (0.6, 0.4); 2/3 (0.6, 0.4); 4
    y = layer(t, x)
    x_hat = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + layer.eps)
    for b, ti in enumerate(t.tolist()):
        pos = min(ti / 0.25, 4.0)
        l = min(int(pos), 3)
        w = pos - l
        gamma = (1 - w) * layer.weight[l] + w * layer.weight[l + 1]
        beta = (1 - w) * layer.bias[l] + w * layer.bias[l + 1]
        torch.testing.assert_close(y[b], x_hat[b] * gamma + beta)
    share = torch.tensor([1.0 + 0.6, 0.4, 0.6, 0.4, 1.0]) / 4  # mean over the 4 samples of their weights
    expected = before_mean + 0.1 * share[:, None] * (x.mean(0) - before_mean)
    torch.testing.assert_close(layer.running_mean, expected)


class _TABNField(torch.nn.Module):
    """f(t, y) = tanh(TA-BN(t, W y)): a right-hand side whose normalisation depends on each sample's time."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.linear = torch.nn.Linear(3, 3, dtype=torch.float64)
        self.norm = randomised(TABatchNorm1d(3, M=8, t_min=0.0, t_max=2.0).double())

    def forward(self, t, y):
        # W y as a broadcast product and sum rather than a BLAS matmul, whose kernel (and so its last bits) may
        # change with the batch size on some CPUs: the test is about the solver's per-sample decisions
        wy = (y.unsqueeze(-2) * self.linear.weight).sum(-1) + self.linear.bias
        return torch.tanh(self.norm(t, wy))


def test_batched_solve_with_tabn_in_eval_mode_is_independent_of_the_batch():
    """In eval mode each sample is normalised with the statistics interpolated at its own time, so a sample's
    solution does not depend on the rest of its batch: the same bits and steps in another batch (reversed, or
    next to an unrelated sample). Alone (a batch of one, where TA-BN takes its scalar-t path, equal to
    round-off) it agrees to the tolerance: TA-BN's kinks in t at the grid points make step decisions
    sensitive to round-off."""
    field = _TABNField().eval()
    y0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([[0.0, 0.5, 1.0], [0.5, 0.75, 1.0], [1.0, 0.5, 0.2], [0.0, 0.1, 0.3]], dtype=torch.float64)
    kwargs = dict(batched=True, controller=pn.IController(rtol=1e-5, atol=1e-7))
    batch = pn.solve(field, y0, t, **kwargs)
    reversed_batch = pn.solve(field, y0.flip(0), t.flip(0), **kwargs)
    assert torch.equal(reversed_batch.ys.flip(0), batch.ys)
    assert torch.equal(reversed_batch.stats.nfe_per_sample.flip(0), batch.stats.nfe_per_sample)
    companion_y0, companion_t = torch.full((1, 3), 5.0, dtype=torch.float64), t[3:]
    for b in range(3):
        pair = pn.solve(field, torch.cat([y0[b : b + 1], companion_y0]), torch.cat([t[b : b + 1], companion_t]),
                        **kwargs)
        assert torch.equal(pair.ys[0], batch.ys[b])
        assert pair.stats.nfe_per_sample[0] == batch.stats.nfe_per_sample[b]
        alone = pn.solve(field, y0[b : b + 1], t[b : b + 1], **kwargs)
        torch.testing.assert_close(alone.ys[0], batch.ys[b], rtol=1e-3, atol=1e-4)


def test_batched_solve_with_tabn_in_train_mode_updates_running_statistics():
    field = _TABNField().train()
    before = field.norm.running_mean.clone()
    y0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([[0.0, 0.5], [0.0, 2.0], [1.0, 1.5], [2.0, 1.2]], dtype=torch.float64)
    sol = pn.solve(field, y0, t, batched=True, controller=pn.IController(rtol=1e-5, atol=1e-7))
    assert torch.isfinite(sol.ys).all()
    assert not torch.equal(field.norm.running_mean, before)
