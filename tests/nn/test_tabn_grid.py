"""TA-BN on a grid [t_min, t_max] that need not start at 0 (a diffusion model's log σ is negative):
Eq. 7's weights, continuity in t, running-statistics updates at the right grid points, and exact
agreement with the paper's [0, T] grid shifted by a constant."""

from __future__ import annotations

import pytest
import torch

from pynodeta.models import build_backbone
from pynodeta.nn import TABatchNorm, TABatchNorm1d, TABatchNorm2d, grid_weights, make_norm


def _randomised(layer: TABatchNorm, seed: int = 0) -> TABatchNorm:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in (layer.running_mean, layer.weight, layer.bias):
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
        layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=generator) + 0.5)
    return layer


def test_grid_points_span_t_min_to_t_max():
    layer = TABatchNorm1d(2, M=4, t_min=-3.0, t_max=1.0)
    torch.testing.assert_close(layer.grid, torch.linspace(-3.0, 1.0, 5, dtype=torch.float64))
    assert (TABatchNorm1d(2, T=2.0).t_min, TABatchNorm1d(2, T=2.0).t_max) == (0.0, 2.0)  # T: [0, T]
    assert (TABatchNorm1d(2).t_min, TABatchNorm1d(2).t_max) == (0.0, 1.0)


@pytest.mark.parametrize("t", [-3.0, -2.6, -2.0, -0.55, 0.0, 0.3, 1.0])
def test_eq7_weights_on_a_negative_grid_reproduce_t(t):
    M, t_min, t_max = 4, -3.0, 1.0
    l, w1, w2 = grid_weights(t, M, t_max, t_min=t_min, outside="error")
    left, right = t_min + l * 1.0, t_min + (l + 1) * 1.0   # Δ = 1
    assert 0 <= l <= M - 1 and left <= t <= right
    assert w1 + w2 == pytest.approx(1.0) and 0.0 <= w2 <= 1.0
    assert w1 * left + w2 * right == pytest.approx(t, abs=1e-12)
    # the same weights as the paper's [0, T] grid at the shifted time
    assert (l, w1, w2) == pytest.approx(grid_weights(t - t_min, M, t_max - t_min, outside="error"), abs=1e-12)


def test_a_shifted_grid_is_the_paper_grid_at_shifted_times():
    shift = -7.25
    paper, shifted = TABatchNorm2d(3, M=5, T=2.0), TABatchNorm2d(3, M=5, t_min=shift, t_max=2.0 + shift)
    shifted.load_state_dict(_randomised(paper).state_dict())
    x = torch.randn(6, 3, 2, 2)
    for t in (0.0, 0.37, 0.8, 1.99, 2.0):
        paper.train(), shifted.train()
        torch.testing.assert_close(shifted(t + shift, x), paper(t, x))
        paper.eval(), shifted.eval()
        torch.testing.assert_close(shifted(t + shift, x), paper(t, x))
    torch.testing.assert_close(shifted.running_mean, paper.running_mean)  # same points updated, same amounts
    torch.testing.assert_close(shifted.running_var, paper.running_var)


def test_eval_output_is_continuous_across_negative_grid_points():
    layer = _randomised(TABatchNorm1d(4, M=4, t_min=-2.0, t_max=-1.0)).eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    layer.double()
    for point in layer.grid[1:-1].tolist():
        eps = 1e-7
        jump = (layer(point + eps, x) - layer(point - eps, x)).abs().max()
        assert jump < 1e-4  # Lipschitz in t: the jump shrinks with eps (no discontinuity at t*_m)


def test_running_statistics_move_at_the_two_neighbouring_negative_grid_points():
    layer = TABatchNorm1d(3, M=4, t_min=-2.0, t_max=-1.0, momentum=0.1)  # t* = -2, -1.75, -1.5, -1.25, -1
    x = torch.randn(32, 3) * 2 + 3
    layer(-1.4, x)  # between t*_2 = -1.5 and t*_3 = -1.25: ω1 = 0.6, ω2 = 0.4
    mean, var = x.mean(0), x.var(0)  # BatchNorm's running variance is the unbiased one
    torch.testing.assert_close(layer.running_mean[2], 0.1 * 0.6 * mean)
    torch.testing.assert_close(layer.running_mean[3], 0.1 * 0.4 * mean)
    torch.testing.assert_close(layer.running_var[2], (1 - 0.06) + 0.06 * var)
    torch.testing.assert_close(layer.running_var[3], (1 - 0.04) + 0.04 * var)
    untouched = [0, 1, 4]
    assert torch.all(layer.running_mean[untouched] == 0) and torch.all(layer.running_var[untouched] == 1)


def test_per_sample_times_on_a_negative_grid_match_scalar_times():
    layer = _randomised(TABatchNorm2d(2, M=3, t_min=-4.0, t_max=-1.0)).eval()
    t, x = torch.tensor([-4.0, -3.1, -2.0, -1.2]), torch.randn(4, 2, 3, 3)
    per_sample = layer(t, x)
    for i in range(4):
        torch.testing.assert_close(per_sample[i:i + 1], layer(float(t[i]), x[i:i + 1]))


def test_times_outside_a_shifted_grid_clamp_or_raise():
    layer = _randomised(TABatchNorm1d(2, M=2, t_min=-1.0, t_max=1.0)).eval()
    x = torch.randn(3, 2)
    torch.testing.assert_close(layer(-5.0, x), layer(-1.0, x))
    strict = TABatchNorm1d(2, M=2, t_min=-1.0, t_max=1.0, outside="error")
    with pytest.raises(ValueError, match=r"t = -1.5 is outside the TA-BN grid \[-1.0, 1.0\]"):
        strict(-1.5, x)
    assert grid_weights(-1.0 - 1e-9, 2, 1.0, t_min=-1.0, outside="error") == (0, 1.0, 0.0)  # round-off


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(T=1.0, t_min=-1.0), "give T .* or t_min and t_max, not both"),
        (dict(t_min=1.0, t_max=1.0), r"needs finite t_min < t_max .* got \[1.0, 1.0\]"),
        (dict(t_min=2.0), r"got \[2.0, 1.0\]"),  # the default t_max is 1
        (dict(t_min=float("-inf"), t_max=0.0), "needs finite t_min < t_max"),
    ],
)
def test_bad_grids_fail_at_construction(options, match):
    with pytest.raises(ValueError, match=match):
        TABatchNorm1d(2, **options)


def test_factories_pass_the_grid_and_default_to_the_ode_span():
    layer = make_norm("tabn", 4, dims=1, t_min=-2.0, t_max=3.0)
    assert (layer.t_min, layer.t_max) == (-2.0, 3.0)
    backbone = build_backbone("mlp", (3,), width=4, norm="tabn", t_span=(-1.5, 0.5))
    grids = {(m.t_min, m.t_max) for m in backbone.modules() if isinstance(m, TABatchNorm)}
    assert grids == {(-1.5, 0.5)}
    with pytest.raises(ValueError, match=r"TA-BN's grid \[-1.0, 0.5\] must cover t_span=\(-1.5, 0.5\)"):
        build_backbone("mlp", (3,), width=4, norm="tabn", t_span=(-1.5, 0.5), norm_options={"t_min": -1.0})
