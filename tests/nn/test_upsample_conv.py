"""The low-resolution form of a 3×3 convolution after 2× nearest upsampling equals the upsampled one."""

import pytest
import torch
import torch.nn.functional as F

from pynodeta.models.diffusion.blocks import UpsampledConv2d
from pynodeta.nn.mp import MPConv, resample
from pynodeta.nn.upsample_conv import conv3x3_of_upsampled, interleave_phases, phase_kernels


def _upsampled(x, weight, bias=None):
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


@pytest.mark.parametrize("shape", [(3, 5, 4, 4), (2, 3, 1, 1), (2, 4, 3, 6), (1, 2, 7, 2)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_equals_the_convolution_of_the_upsampled_image(shape, with_bias):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(6, shape[1], 3, 3, generator=generator, dtype=torch.float64)
    bias = torch.randn(6, generator=generator, dtype=torch.float64) if with_bias else None
    expected = _upsampled(x, weight, bias)
    assert conv3x3_of_upsampled(x, weight, bias).shape == expected.shape
    torch.testing.assert_close(conv3x3_of_upsampled(x, weight, bias), expected, rtol=1e-12, atol=1e-12)


def test_gradients_equal_those_through_the_upsampled_image():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 4, 8, 10, generator=generator, dtype=torch.float64)
    folded = torch.autograd.grad((conv3x3_of_upsampled(x, weight, bias) * upstream).sum(), (x, weight, bias))
    direct = torch.autograd.grad((_upsampled(x, weight, bias) * upstream).sum(), (x, weight, bias))
    for got, want in zip(folded, direct):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(conv3x3_of_upsampled, (x[:1, :2, :2, :3], weight[:2, :2], bias[:2]))


def test_phase_kernels_sum_the_taps_each_phase_sees():
    weight = torch.arange(9.0).reshape(1, 1, 3, 3)  # rows (0 1 2), (3 4 5), (6 7 8)
    kernels = phase_kernels(weight).reshape(2, 2, 2, 2)
    # even row, even column: rows (0 | 1 + 2), columns (0 | 1 + 2)
    assert kernels[0, 0].tolist() == [[0.0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]]
    # odd row, odd column: rows (0 + 1 | 2), columns (0 + 1 | 2)
    assert kernels[1, 1].tolist() == [[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8.0]]
    # every phase keeps the kernel's total
    assert kernels.sum(dim=(2, 3)).flatten().tolist() == [36.0] * 4


def test_refuses_a_kernel_that_is_not_3x3():
    with pytest.raises(ValueError, match=r"3×3 convolution kernel \(out, in, 3, 3\), got \(2, 2, 5, 5\)"):
        conv3x3_of_upsampled(torch.zeros(1, 2, 4, 4), torch.zeros(2, 2, 5, 5))


def test_phase_kernels_stay_in_the_weights_dtype_under_autocast():
    weight = torch.randn(2, 3, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert phase_kernels(weight).dtype == torch.float32
        x = torch.randn(1, 3, 4, 4)
        assert conv3x3_of_upsampled(x, weight).dtype == _upsampled(x, weight).dtype == torch.bfloat16


def test_ddpm_upsample_conv_is_a_conv2d_of_the_upsampled_input_under_the_same_names():
    torch.manual_seed(0)
    folded = UpsampledConv2d(3, 5).double()
    plain = torch.nn.Conv2d(3, 5, 3, padding=1).double()
    plain.load_state_dict(folded.state_dict())  # same parameter names and shapes: old checkpoints load
    assert isinstance(folded, torch.nn.Conv2d)
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(folded(x), plain(F.interpolate(x, scale_factor=2.0, mode="nearest")),
                               rtol=1e-12, atol=1e-12)


def test_mpconv_upsample_equals_the_conv_of_the_resampled_input_and_refuses_other_kernels():
    torch.manual_seed(0)
    conv = MPConv(3, 4, kernel=(3, 3)).double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(conv(x, gain=0.7, upsample=True), conv(resample(x, "up"), gain=0.7),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"upsample=True needs a 3×3 convolution.*resample\(x, 'up'\) first"):
        MPConv(3, 4, kernel=(1, 1))(x, upsample=True)


def test_channels_last_input_gives_the_same_result():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 4, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(conv3x3_of_upsampled(x.contiguous(memory_format=torch.channels_last), weight),
                               _upsampled(x, weight), rtol=1e-12, atol=1e-12)


def test_interleave_phases_puts_phase_a_b_pixel_i_plus_a_j_plus_b_at_2i_plus_a_2j_plus_b():
    phases = torch.randn(2, 2, 2, 3, 4, 6)  # (batch, a, b, out, H + 1, W + 1)
    out = interleave_phases(phases)
    assert out.shape == (2, 3, 6, 10)
    for a in (0, 1):
        for b in (0, 1):
            assert torch.equal(out[:, :, a::2, b::2], phases[:, a, b, :, a:a + 3, b:b + 5])
    assert torch.equal(interleave_phases(phases.transpose(4, 5).contiguous().transpose(4, 5)), out)
