"""Magnitude-preserving layers: unit variance in → unit variance out, forced weight normalisation only
in training mode, gradients against finite differences."""

import math

import pytest
import torch

from pynodeta.nn.mp import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, resample


def _rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(12345)  # not the weights' seed: x must be independent of W


def test_normalize_gives_unit_rms_per_sample_and_pixel_norm_per_position(generator):
    x = 3.0 * torch.randn(4, 5, 6, 6, generator=generator)
    per_sample = normalize(x).pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(per_sample, torch.ones(4), atol=1e-3, rtol=0)
    per_pixel = normalize(x, dim=1).pow(2).mean(dim=1).sqrt()
    torch.testing.assert_close(per_pixel, torch.ones(4, 6, 6), atol=1e-3, rtol=0)


def test_mp_silu_keeps_unit_rms(generator):
    assert _rms(mp_silu(torch.randn(10**6, generator=generator))) == pytest.approx(1.0, abs=5e-3)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 0.9])
def test_mp_sum_keeps_unit_rms_of_independent_inputs(generator, t):
    a, b = torch.randn(2, 10**5, generator=generator)
    assert _rms(mp_sum(a, b, t)) == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("t", [0.3, 0.5, 0.7])
def test_mp_cat_keeps_unit_rms_and_splits_magnitude_by_t(generator, t):
    a = torch.randn(512, 24, generator=generator)
    b = torch.randn(512, 40, generator=generator)
    y = mp_cat(a, b, dim=1, t=t)
    assert y.shape == (512, 64)
    assert _rms(y) == pytest.approx(1.0, abs=2e-2)
    energy_a, energy_b = y[:, :24].pow(2).sum(), y[:, 24:].pow(2).sum()
    assert (energy_b / energy_a).item() == pytest.approx(t**2 / (1 - t) ** 2, rel=5e-2)


def test_mp_fourier_has_unit_rms_at_any_input(generator):
    torch.manual_seed(0)
    fourier = MPFourier(4096)
    for value in (-3.0, 0.0, 0.7, 20.0):
        assert _rms(fourier(torch.full((2,), value))) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("kernel", [(), (1, 1), (3, 3)])
def test_mp_conv_keeps_unit_rms(generator, kernel):
    torch.manual_seed(0)
    layer = MPConv(64, 48, kernel)
    x = torch.randn(64, 64, generator=generator) if kernel == () else torch.randn(8, 64, 12, 12, generator=generator)
    y = layer(x)
    interior = y if kernel == () else y[..., 1:-1, 1:-1]  # zero padding shrinks the border
    assert _rms(interior) == pytest.approx(1.0, abs=0.05)
    assert _rms(layer(x, gain=2.5)[..., 1:-1, 1:-1] if kernel else layer(x, gain=2.5)) == pytest.approx(
        2.5 * _rms(interior), rel=1e-5)


def test_forced_weight_normalisation_only_in_training_mode():
    torch.manual_seed(0)
    layer = MPConv(6, 4, (3, 3))
    with torch.no_grad():
        layer.weight.mul_(7.0)
    raw = layer.weight.detach().clone()
    x = torch.randn(2, 6, 5, 5)
    eval_out = layer.eval()(x)
    assert torch.equal(layer.weight, raw)  # eval never touches the stored weight
    train_out = layer.train()(x)
    row_rms = layer.weight.detach().flatten(1).pow(2).mean(1).sqrt()
    torch.testing.assert_close(row_rms, torch.ones(4), atol=1e-3, rtol=0)  # stored weight renormalised
    torch.testing.assert_close(train_out, eval_out, atol=1e-4, rtol=1e-4)  # the output is scale-free


def test_weight_gradient_is_orthogonal_to_the_weight():
    # normalize(W) is invariant to the scale of each row, so ∂L/∂W ⟂ W row by row, up to the
    # eps/(eps + RMS) ≈ 1e-4 that eps adds (paper Sec. 2.5).
    torch.manual_seed(0)
    layer = MPConv(8, 3).double().eval()
    layer(torch.randn(5, 8, dtype=torch.float64)).pow(2).sum().backward()
    grad, weight = layer.weight.grad, layer.weight.detach()
    cosine = (grad * weight).sum(1) / (grad.norm(dim=1) * weight.norm(dim=1))
    assert cosine.abs().max().item() < 5e-4


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    conv = MPConv(3, 2, (3, 3)).double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, w: torch.nn.functional.conv2d(
        inp, normalize(w) / math.sqrt(27), padding=1), (x, conv.weight))
    assert torch.autograd.gradcheck(lambda inp: conv(inp, gain=1.3), (x,))
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a_, b_: mp_cat(mp_silu(a_), b_, t=0.3), (a, b))
    assert torch.autograd.gradcheck(lambda a_: mp_sum(normalize(a_), a_.flip(0), 0.3), (a,))


def test_resample_halves_and_doubles_resolution():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert resample(x, "down")[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert torch.equal(resample(resample(x, "up"), "down"), x)
    with pytest.raises(ValueError, match="resample mode"):
        resample(x, "sideways")


def test_ablation_modes_leave_the_stored_weight_alone():
    torch.manual_seed(0)
    x = torch.randn(2, 6)
    for mode in ("standard", "none"):
        layer = MPConv(6, 4, weight_norm=mode).train()
        with torch.no_grad():
            layer.weight.mul_(5.0)
        raw = layer.weight.detach().clone()
        out = layer(x)
        assert torch.equal(layer.weight, raw)
        if mode == "none":  # no normalisation: the output grows with the weight
            torch.testing.assert_close(out, x @ raw.t() / math.sqrt(6))
    with pytest.raises(ValueError, match="weight_norm must be one of"):
        MPConv(2, 2, weight_norm="sometimes")


@pytest.mark.parametrize("dim", [1, -1, 0])
def test_mp_cat_without_autograd_writes_the_values_of_the_autograd_path(generator, dim):
    a = torch.randn(3, 4, 5, generator=generator)
    b = torch.randn(3, 4, 5, generator=generator).narrow(dim, 0, 2)  # a narrower b, not contiguous for dim -1
    with_grad = mp_cat(a.clone().requires_grad_(), b, dim=dim, t=0.3)
    with torch.no_grad():
        without = mp_cat(a, b, dim=dim, t=0.3)
    assert torch.equal(without, with_grad.detach())


def test_mp_cat_without_autograd_promotes_dtypes_and_names_a_shape_mismatch_as_torch_cat(generator):
    a, b = torch.randn(2, 3, 4, generator=generator), torch.randn(2, 5, 4, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        assert mp_cat(a, b).dtype == torch.float64
        with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
            mp_cat(a, torch.randn(2, 5, 3))


def test_mp_conv_1x1_without_autograd_equals_the_convolution(generator):
    torch.manual_seed(0)
    layer = MPConv(6, 9, kernel=(1, 1)).eval()
    x = torch.randn(4, 6, 5, 3, generator=generator).to(memory_format=torch.channels_last)
    with_grad = layer(x.clone().requires_grad_(), gain=0.7)  # the convolution kernel
    with torch.no_grad():
        without = layer(x, gain=0.7)  # the per-image matrix product
    torch.testing.assert_close(without, with_grad.detach(), rtol=1e-6, atol=1e-6)
    assert without.shape == (4, 9, 5, 3)
