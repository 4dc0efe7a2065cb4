"""TA-BN refuses NaN times and a grid span or eps that cannot define a normalisation."""

import math

import numpy as np
import pytest
import torch

from pynodeta.nn import TABatchNorm1d, TABatchNorm2d


@pytest.mark.parametrize("outside", ["error", "clamp"])
def test_a_nan_per_sample_time_is_a_clear_error(outside):
    tabn = TABatchNorm2d(4, M=10, outside=outside).eval()
    x = torch.randn(3, 4, 2, 2)
    with pytest.raises(ValueError, match=r"per-sample t is NaN at batch positions \[1\]"):
        tabn(torch.tensor([0.5, math.nan, 0.2]), x)
    with pytest.raises(ValueError, match="t is NaN"):
        tabn(torch.tensor(math.nan), x)  # the scalar path already refused it


@pytest.mark.parametrize("T", [math.inf, math.nan, -1.0, 0.0])
def test_the_grid_span_must_be_finite_and_positive(T):
    with pytest.raises(ValueError, match=rf"needs finite t_min < t_max \(T > 0 for \[0, T\]\), got \[0.0, {T}\]"):
        TABatchNorm1d(3, T=T)


@pytest.mark.parametrize("eps", [-1e-5, 0.0, math.inf, math.nan])
def test_eps_must_be_finite_and_positive(eps):
    with pytest.raises(ValueError, match=f"eps must be a finite number > 0 .*got {eps}"):
        TABatchNorm2d(3, eps=eps)


@pytest.mark.parametrize("bad", ["0.5", b"0.5", True])
def test_a_text_or_bool_time_is_refused_by_name(bad):
    tabn, x = TABatchNorm2d(4, M=10).eval(), torch.randn(3, 4, 2, 2)
    with pytest.raises(TypeError, match=f"t must be a number or a tensor of times, got {type(bad).__name__}"):
        tabn(bad, x)


def test_numbers_of_any_kind_and_lists_of_per_sample_times_are_times():
    tabn, x = TABatchNorm2d(4, M=10).eval(), torch.randn(3, 4, 2, 2)
    with torch.no_grad():
        tabn.running_mean.copy_(torch.linspace(0, 1, 11)[:, None].expand(11, 4))
    expected = tabn(torch.tensor(0.25), x)
    for same in (0.25, np.float32(0.25), np.float64(0.25), np.array(0.25)):
        torch.testing.assert_close(tabn(same, x), expected)
    torch.testing.assert_close(tabn([0.25, 0.5, 0.75], x), tabn(torch.tensor([0.25, 0.5, 0.75]), x))
