"""The estimators' definitions: exact values on constructed activations, and their invariances."""

import math

import pytest
import torch

from pynodeta.diagnose import noise_floor, offset_fraction, output_sensitivity, survival_ratio, time_share
from pynodeta.diagnose.estimators import slices

TIMES = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)


def _offset_plus_operand(v_scale=1.0, operand_scale=1.0, seed=0):
    # a[k, c, s] = operand[c, s] + t_k · v[c]: a per-channel time offset on a time-free operand
    g = torch.Generator().manual_seed(seed)
    operand = torch.randn(4, 9, generator=g, dtype=torch.float64) * operand_scale
    v = torch.randn(4, generator=g, dtype=torch.float64) * v_scale
    return operand[None] + TIMES[:, None, None] * v[None, :, None]


def test_time_share_is_the_law_of_total_variance_split_averaged_over_slices():
    a = _offset_plus_operand()[:, None]        # (times, batch 1, channels 4, 9 positions)
    shares = []
    for c in range(4):
        s = a[:, 0, c]
        v_time = s.var(dim=0, unbiased=False).mean()
        v_between = s.mean(dim=0).var(unbiased=False)
        shares.append(float(v_time / (v_time + v_between)))
    assert time_share(a) == pytest.approx(sum(shares) / 4, rel=1e-12)


def test_slices_are_sample_channel_maps_or_features():
    assert slices(torch.zeros(5, 2, 3, 4, 4)).shape == (5, 6, 16)
    assert slices(torch.zeros(5, 2, 3)).shape == (5, 3, 2)       # features, over the batch
    assert slices(torch.zeros(5, 7)).shape == (5, 1, 7)


def test_time_share_ignores_a_per_slice_rescaling():
    a = _offset_plus_operand()[:, None]
    scale = torch.tensor([1.0, 10.0, 0.1, 3.0], dtype=torch.float64)[None, None, :, None]
    assert time_share(a * scale + 5.0) == pytest.approx(time_share(a), rel=1e-12)


def test_time_share_extremes():
    constant_in_time = torch.randn(3, 5, dtype=torch.float64).expand(4, 3, 5)
    assert time_share(constant_in_time) == 0.0
    only_time = TIMES[:, None].expand(5, 7)   # every element equals t_k
    assert time_share(only_time) == pytest.approx(1.0, rel=1e-12)
    assert time_share(torch.ones(3, 4)) == 0.0


def test_time_share_and_survival_are_scale_and_shift_invariant():
    a = _offset_plus_operand()
    b = _offset_plus_operand(seed=1)
    assert time_share(3.7 * a - 2.0) == pytest.approx(time_share(a), rel=1e-12)
    floor = noise_floor(torch.float64)
    assert survival_ratio(1e3 * a, 1e-3 * b, floor) == pytest.approx(survival_ratio(a, b, floor), rel=1e-12)


def test_survival_of_the_identity_is_one_and_of_a_time_free_output_zero():
    a = _offset_plus_operand()
    floor = noise_floor(torch.float64)
    assert survival_ratio(a, a, floor) == pytest.approx(1.0, rel=1e-12)
    assert survival_ratio(a, a[:1].expand_as(a), floor) == 0.0


def test_survival_is_undefined_without_a_time_signal_at_the_input():
    constant = torch.randn(6, 2, dtype=torch.float64).expand(5, 6, 2)
    assert survival_ratio(constant, _offset_plus_operand(), noise_floor(torch.float64)) is None


def test_offset_fraction_is_one_for_a_per_unit_offset_and_zero_for_a_zero_mean_pattern():
    a = _offset_plus_operand()                                    # units = channels
    assert offset_fraction(a) == pytest.approx(1.0, abs=1e-12)
    pattern = torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64)   # sums to 0 in each unit
    zero_mean = TIMES[:, None, None] * pattern[None, None, :].expand(1, 3, 4)
    assert offset_fraction(zero_mean) == pytest.approx(0.0, abs=1e-15)
    half = TIMES[:, None, None] * torch.tensor([1.0, 1.0, 3.0, -1.0], dtype=torch.float64)[None, None]
    # unit mean 1 (squared 1), mean square 3: a third of the signal is the offset
    assert offset_fraction(half.expand(5, 2, 4)) == pytest.approx(1 / 3, rel=1e-12)
    assert math.isnan(offset_fraction(torch.ones(3, 2, 4)))


def test_output_sensitivity_matches_its_closed_form():
    # y_k = (1 + t_k) · c: deviation (t_k - 0.5)·c, so sensitivity = sqrt(Var(t) / E[(1 + t)²])
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    y = (1 + TIMES)[:, None] * c[None]
    expected = math.sqrt(TIMES.var(unbiased=False) / ((1 + TIMES) ** 2).mean())
    assert output_sensitivity(y) == pytest.approx(expected, rel=1e-12)
    assert output_sensitivity(c.expand(5, 3)) == 0.0
    assert output_sensitivity(torch.zeros(5, 3)) == 0.0


def test_noise_floor_scales_with_precision():
    assert noise_floor(torch.float64) < 1e-25 < noise_floor(torch.float32) < 1e-9
