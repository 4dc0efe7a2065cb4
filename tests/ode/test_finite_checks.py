"""The one-reduction finiteness test used on y0 and f(t0, y0) before a solve."""

import math

import pytest
import torch

import pynodeta as pn
from pynodeta.ode.validation import all_finite


@pytest.mark.parametrize("values, expected", [
    ([1.0, 2.0], True),
    ([1.0, math.inf], False),
    ([math.inf, -math.inf], False),  # the sum is nan, not a cancelled 0
    ([1.0, math.nan], False),
    ([3e38, 3e38, 3e38], True),  # finite values whose float32 sum overflows: the full test decides
])
def test_all_finite(values, expected):
    assert all_finite(torch.tensor(values, dtype=torch.float32)) is expected


def test_a_non_finite_derivative_at_the_start_is_refused():
    with pytest.raises(pn.NonFiniteStateError):
        pn.odeint(lambda t, y: y / 0.0, torch.ones(3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        pn.odeint(lambda t, y: y, torch.tensor([1.0, math.inf]), torch.tensor([0.0, 1.0]))
