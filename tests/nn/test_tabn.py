"""TA-BN (Zheng et al. 2024) against the paper's equations."""

import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from pynodeta.nn import (
    TABatchNorm,
    TABatchNorm1d,
    TABatchNorm2d,
    backward_solve,
    grid_weights,
    no_stat_updates,
    tabn_regularizer,
)

from .nn_testing import CallAgainInBackward, randomised

# --- Eq. 7 weights ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "t, expected",
    [
        (0.0, (0, 1.0, 0.0)),           # at the first grid point
        (0.5, (2, 1.0, 0.0)),           # at an interior grid point: all weight on it
        (0.6, (2, 0.6, 0.4)),           # between t*_2 = 0.5 and t*_3 = 0.75
        (1.0, (3, 0.0, 1.0)),           # at t = T: the right point of the last interval
    ],
)
def test_grid_weights_at_and_between_grid_points(t, expected):
    l, w1, w2 = grid_weights(t, M=4, t_max=1.0, outside="error")
    assert l == expected[0]
    assert w1 == pytest.approx(expected[1], abs=1e-12) and w2 == pytest.approx(expected[2], abs=1e-12)
    # The weights reproduce t as a convex combination of the two neighbours.
    assert w1 * l * 0.25 + w2 * (l + 1) * 0.25 == pytest.approx(t, abs=1e-12)


def test_grid_has_m_plus_one_points_including_both_ends():
    torch.testing.assert_close(TABatchNorm1d(2, M=4, T=2.0).grid, torch.linspace(0, 2, 5, dtype=torch.float64))


def test_grid_weights_beyond_the_grid():
    with pytest.raises(ValueError, match=r"t = 1.2 is outside the TA-BN grid \[0.0, 1.0\].*outside='clamp'"):
        grid_weights(1.2, M=4, t_max=1.0, outside="error")
    with pytest.raises(ValueError, match="outside the TA-BN grid"):
        grid_weights(-0.1, M=4, t_max=1.0, outside="error")
    assert grid_weights(1.2, M=4, t_max=1.0, outside="clamp") == (3, 0.0, 1.0)
    assert grid_weights(-0.1, M=4, t_max=1.0, outside="clamp") == (0, 1.0, 0.0)
    # Round-off past an end point is the end point, not an error.
    assert grid_weights(1.0 + 1e-9, M=4, t_max=1.0, outside="error") == (3, 0.0, 1.0)


def test_tensor_time_keeps_weights_differentiable():
    t = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    _, w1, w2 = grid_weights(t, M=4, t_max=1.0, outside="error")
    w2.backward()
    assert t.grad.item() == pytest.approx(4.0)  # dω2/dt = 1/Δ


# --- train mode --------------------------------------------------------------------------------

def test_train_at_a_grid_point_is_batchnorm_with_that_points_parameters():
    torch.manual_seed(0)
    tabn, bn = TABatchNorm2d(5, M=4), torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        tabn.weight.uniform_(0.5, 1.5)
        tabn.bias.normal_()
        bn.weight.copy_(tabn.weight[1])
        bn.bias.copy_(tabn.bias[1])
    x = torch.randn(8, 5, 3, 3) * 2 + 1
    torch.testing.assert_close(tabn(0.25, x), bn(x))
    torch.testing.assert_close(tabn.running_mean[1], bn.running_mean)
    torch.testing.assert_close(tabn.running_var[1], bn.running_var)
    untouched = [0, 2, 3, 4]
    assert torch.all(tabn.running_mean[untouched] == 0) and torch.all(tabn.running_var[untouched] == 1)


def test_train_update_between_grid_points_weights_momentum_by_eq7():
    torch.manual_seed(0)
    tabn = TABatchNorm1d(3, M=4, momentum=0.1)
    x = torch.randn(64, 3) + torch.tensor([1.0, -2.0, 3.0])
    tabn(0.35, x)  # l = 1, ω1 = 0.6, ω2 = 0.4
    mu, var = x.mean(0), x.var(0, unbiased=True)
    torch.testing.assert_close(tabn.running_mean[1], 0.1 * 0.6 * mu)
    torch.testing.assert_close(tabn.running_mean[2], 0.1 * 0.4 * mu)
    torch.testing.assert_close(tabn.running_var[1], (1 - 0.06) + 0.06 * var)
    torch.testing.assert_close(tabn.running_var[2], (1 - 0.04) + 0.04 * var)


def test_train_rejects_wrong_shapes():
    tabn = TABatchNorm2d(3)
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, C, H, W\)"):
        tabn(0.5, torch.randn(4, 3))
    with pytest.raises(ValueError, match="x has 2 channels, this layer was built for 3"):
        tabn(0.5, torch.randn(4, 2, 2, 2))
    with pytest.raises(ValueError, match="M must be an integer >= 1, got 0"):
        TABatchNorm2d(3, M=0)
    with pytest.raises(ValueError, match=r"needs finite t_min < t_max \(T > 0 for \[0, T\]\), got \[0.0, 0.0\]"):
        TABatchNorm2d(3, T=0.0)


def test_no_stat_updates_freezes_running_statistics_but_still_normalises():
    tabn = TABatchNorm1d(3, M=4)
    x = torch.randn(16, 3) + 5
    with no_stat_updates():
        y = tabn(0.3, x)
    assert torch.all(tabn.running_mean == 0) and torch.all(tabn.running_var == 1)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("update_in_backward, expected_updates", [(False, 1), (True, 2)])
def test_calls_during_a_backward_pass_update_only_when_asked(update_in_backward, expected_updates):
    tabn = TABatchNorm1d(3, M=4, momentum=0.5, update_stats_in_backward=update_in_backward)
    x = torch.ones(8, 3).cumsum(0).requires_grad_(True)  # batch mean 4.5 in every channel
    CallAgainInBackward.apply(x, tabn).sum().backward()
    expected = 4.5 * (1 - 0.5 ** expected_updates)
    torch.testing.assert_close(tabn.running_mean[0], torch.full((3,), expected))


def test_backward_solve_context_marks_calls_outside_autograd():
    tabn = TABatchNorm1d(3, M=4)
    with backward_solve():
        tabn(0.0, torch.randn(8, 3) + 1)
    assert torch.all(tabn.running_mean == 0)
    eager = TABatchNorm1d(3, M=4, update_stats_in_backward=True)
    with backward_solve():
        eager(0.0, torch.randn(8, 3) + 1)
    assert torch.all(eager.running_mean[0] != 0)


def test_activation_checkpointing_recomputes_the_same_graph():
    tabn = TABatchNorm1d(3, M=4)
    x = torch.randn(8, 3, requires_grad=True)
    checkpoint(lambda x: tabn(0.3, x), x, use_reentrant=False).pow(2).sum().backward()
    reference = x.grad.clone()
    x.grad = None
    tabn(0.3, x).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, reference)


# --- eval mode ---------------------------------------------------------------------------------

def test_eval_interpolates_statistics_and_affine():
    torch.manual_seed(0)
    tabn = randomised(TABatchNorm2d(4, M=4)).eval()
    x = torch.randn(5, 4, 3, 3)
    l, w1, w2 = 1, 0.6, 0.4  # t = 0.35
    mean = w1 * tabn.running_mean[l] + w2 * tabn.running_mean[l + 1]
    var = w1 * tabn.running_var[l] + w2 * tabn.running_var[l + 1]
    gamma = w1 * tabn.weight[l] + w2 * tabn.weight[l + 1]
    beta = w1 * tabn.bias[l] + w2 * tabn.bias[l + 1]
    v = (1, 4, 1, 1)
    expected = (x - mean.view(v)) / torch.sqrt(var.view(v) + tabn.eps) * gamma.view(v) + beta.view(v)
    torch.testing.assert_close(tabn(0.35, x), expected)


def test_eval_output_continuous_across_a_grid_point():
    torch.manual_seed(0)
    tabn = randomised(TABatchNorm2d(4, M=4)).double().eval()
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    at = tabn(0.5, x)
    for h in (1e-4, 1e-7):
        assert (tabn(0.5 - h, x) - at).abs().max() < 100 * h
        assert (tabn(0.5 + h, x) - at).abs().max() < 100 * h


def test_eval_output_does_not_depend_on_the_batch():
    torch.manual_seed(0)
    tabn = randomised(TABatchNorm2d(4, M=10)).eval()
    batch = torch.randn(256, 4, 3, 3) * 3
    y_big = tabn(0.437, batch)
    y_pair = tabn(0.437, batch[:2])
    torch.testing.assert_close(y_pair[0], y_big[0], rtol=0, atol=0)


def test_eval_per_sample_times_match_scalar_calls():
    torch.manual_seed(0)
    tabn = randomised(TABatchNorm2d(4, M=10)).eval()
    x = torch.randn(3, 4, 2, 2)
    t = torch.tensor([0.0, 0.437, 1.0])
    y = tabn(t, x)
    for i in range(3):
        torch.testing.assert_close(y[i:i + 1], tabn(float(t[i]), x[i:i + 1]))
    torch.testing.assert_close(tabn(torch.tensor([1.5, -0.5, 0.3]), x),
                               torch.cat([tabn(1.0, x[:1]), tabn(0.0, x[1:2]), tabn(0.3, x[2:])]))
    strict = TABatchNorm2d(4, M=10, outside="error").eval()
    with pytest.raises(ValueError, match="some t are outside the TA-BN grid"):
        strict(torch.tensor([0.5, 1.5, 0.2]), x)


def test_default_clamps_times_beyond_the_grid_to_the_end_point():
    torch.manual_seed(0)
    tabn = randomised(TABatchNorm1d(3, M=4))
    x = torch.randn(8, 3)
    torch.testing.assert_close(tabn.eval()(1.3, x), tabn(1.0, x))
    torch.testing.assert_close(tabn(-0.2, x), tabn(0.0, x))
    before = tabn.running_mean.clone()
    tabn.train()(1.3, x)  # updates the end point, as t = T would
    assert torch.equal(tabn.running_mean[:4], before[:4]) and not torch.equal(tabn.running_mean[4], before[4])
    with pytest.raises(ValueError, match=r"t = 1.3 is outside the TA-BN grid"):
        TABatchNorm1d(3, M=4, outside="error")(1.3, x)


def test_state_dict_round_trip_keeps_statistics():
    torch.manual_seed(0)
    tabn = randomised(TABatchNorm1d(3, M=5))
    state = tabn.state_dict()
    assert set(state) == {"running_mean", "running_var", "weight", "bias"}
    assert state["running_mean"].shape == (6, 3)
    fresh = TABatchNorm1d(3, M=5)
    fresh.load_state_dict(state)
    x = torch.randn(4, 3)
    torch.testing.assert_close(fresh.eval()(0.77, x), tabn.eval()(0.77, x), rtol=0, atol=0)


def test_running_statistics_converge_to_per_time_population_statistics():
    # x(t) ~ N(3t, (1 + t)²) in every channel; train-mode calls at random times.
    torch.manual_seed(0)
    M = 10
    tabn = TABatchNorm1d(2, M=M, momentum=0.1)
    for _ in range(1000):
        t = torch.rand(()).item()
        tabn(t, 3 * t + (1 + t) * torch.randn(512, 2))
    grid = torch.linspace(0, 1, M + 1)
    interior = slice(1, M)
    # The tent-weighted average of a linear mean is the mean at the grid point.
    mean, var = 3 * grid[interior, None], (1 + grid[interior, None]) ** 2
    # What remains is the fluctuation of an exponential average (momentum 0.1 · ω): a few per cent.
    torch.testing.assert_close(tabn.running_mean[interior], mean.expand(M - 1, 2), atol=0.1, rtol=0)
    torch.testing.assert_close(tabn.running_var[interior], var.expand(M - 1, 2), atol=0, rtol=0.08)
    # Eval at an arbitrary time then standardises fresh data from that time.
    t = 0.43
    y = tabn.eval()(t, 3 * t + (1 + t) * torch.randn(20000, 2))
    torch.testing.assert_close(y.mean(0), torch.zeros(2), atol=0.05, rtol=0)
    torch.testing.assert_close(y.std(0), torch.ones(2), atol=0.05, rtol=0)


def test_regularizer_is_lambda_times_sum_of_mse():
    tabn = TABatchNorm1d(2, M=2, reg_weight=0.1)
    with torch.no_grad():
        tabn.weight.copy_(torch.tensor([[1.0, 3.0], [1.0, 1.0], [0.0, 1.0]]))
        tabn.bias.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]))
    # per point: mse(γ, 1) + mse(β, 0) = 2 + 0, 0 + 2, 0.5 + 0 -> sum 4.5
    assert tabn.regularizer().item() == pytest.approx(0.45)
    model = torch.nn.ModuleList([tabn, TABatchNorm1d(2, M=2), torch.nn.Linear(2, 2)])
    assert tabn_regularizer(model).item() == pytest.approx(0.45)


def test_reversed_time_visits_the_same_grid_points():
    torch.manual_seed(0)
    tabn = randomised(TABatchNorm2d(2, M=4)).eval()
    x = torch.randn(2, 2, 2, 2)
    times = [0.1, 0.35, 0.8]
    forward = [tabn(t, x) for t in times]
    backward = [tabn(t, x) for t in reversed(times)]
    for a, b in zip(forward, reversed(backward), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert math.isclose(grid_weights(0.35, 4, 1.0, outside="error")[2], 0.4)


def test_one_public_base_class_and_one_regulariser():
    layers = [TABatchNorm1d(3, M=2), TABatchNorm2d(2, M=4, reg_weight=0.5), TABatchNorm1d(3, M=2, affine=False)]
    assert all(isinstance(m, TABatchNorm) for m in layers)
    model = torch.nn.ModuleList(layers)
    with torch.no_grad():
        layers[0].weight.fill_(2.0)   # (γ - 1)² = 1 at 3 grid points
        layers[1].bias.fill_(3.0)     # β² = 9 at 5 grid points
    assert tabn_regularizer(model).item() == pytest.approx(0.1 * 3 + 0.5 * 45)   # each layer's own λ
    assert tabn_regularizer(model, 2.0).item() == pytest.approx(2.0 * (3 + 45))  # one λ for all
    assert tabn_regularizer(model, 0.0).item() == 0.0
    with pytest.raises(ValueError, match="regulariser weight must be >= 0"):
        tabn_regularizer(model, -1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"M": 2.5}, r"M must be an integer >= 1, got 2.5"),
    ({"M": True}, r"M must be an integer >= 1, got True"),
    ({"momentum": None}, r"momentum must be a number in \[0, 1\] .*got None"),
    ({"momentum": 1.5}, r"momentum must be a number in \[0, 1\]"),
    ({"reg_weight": -1.0}, r"reg_weight must be a finite number >= 0 \(a negative one would reward"),
])
def test_settings_are_refused_by_name_before_any_tensor_is_made(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TABatchNorm2d(3, **kwargs)
