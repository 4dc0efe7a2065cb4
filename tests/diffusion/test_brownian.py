"""BrownianNoise: increments of one Brownian path, with the correlations of nested intervals."""

import math

import pytest
import torch

from pynodeta.diffusion import BrownianNoise

N = 40000


def _noise(seed=0):
    return BrownianNoise(torch.zeros(N, dtype=torch.float64), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("inner_first", [True, False])
def test_nested_intervals_are_correlated_as_brownian_increments(inner_first):
    """corr(ΔW over [s, a], ΔW over [b, a]) = √((a − s)/(a − b)) whichever is drawn first (the second
    query extends the path, or fills it in by the Brownian bridge)."""
    a, s, b = 4.0, 3.0, 0.5
    noise = _noise()
    if inner_first:
        inner, outer = noise(a, s), noise(a, b)
    else:
        outer, inner = noise(a, b), noise(a, s)
    for draws in (inner, outer):
        assert float(draws.mean()) == pytest.approx(0.0, abs=0.02)
        assert float(draws.std()) == pytest.approx(1.0, abs=0.02)
    correlation = float(torch.corrcoef(torch.stack([inner, outer]))[0, 1])
    assert correlation == pytest.approx(math.sqrt((a - s) / (a - b)), abs=0.015)


def test_increments_add_up_and_disjoint_ones_are_independent():
    noise = _noise()
    whole = noise(4.0, 1.0) * math.sqrt(3.0)
    parts = noise(4.0, 2.5) * math.sqrt(1.5) + noise(2.5, 1.0) * math.sqrt(1.5)
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-12)
    later = noise(1.0, 0.2)
    assert abs(float(torch.corrcoef(torch.stack([whole, later]))[0, 1])) < 0.02


def test_a_fresh_interval_is_the_generator_s_next_draw():
    noise, generator = BrownianNoise(torch.zeros(5), torch.Generator().manual_seed(7)), torch.Generator().manual_seed(7)
    noise(3.0, 2.0)  # nothing known: W(2) = 0, then W(3) = √1·z₁
    noise.forget_above(2.0)
    expected = [torch.randn(5, generator=generator) for _ in range(2)]
    torch.testing.assert_close(noise(2.0, 1.5), expected[1])
    assert noise.times == [1.5, 2.0]


def test_the_same_seed_gives_the_same_path_and_empty_intervals_are_refused():
    first, second = _noise(3), _noise(3)
    torch.testing.assert_close(first(2.0, 1.0), second(2.0, 1.0), rtol=0, atol=0)
    with pytest.raises(ValueError, match="length > 0"):
        first(1.0, 1.0)
