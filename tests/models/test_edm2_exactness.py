"""The EDM2 U-Net's fast paths compute the released formulas: outputs, gradients and the forced weight
normalisation of a straightforward implementation (NVlabs/edm2 networks_edm2.py, written out below)
agree to round-off, in training and in eval mode (float64, so that round-off is far below any slip in
the mathematics; float32 outputs too)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from pynodeta.models.diffusion.edm2_unet import EDM2Block, EDM2UNet
from pynodeta.nn.mp import MPConv, normalize, resample

# --- the released formulas, one op at a time -------------------------------------------------------------


def reference_normalize(x, dim=None, eps=1e-4):
    dim = list(range(1, x.ndim)) if dim is None else dim
    accumulate = torch.promote_types(x.dtype, torch.float32)  # float32 as released; float64 stays float64
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=accumulate)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def reference_mp_silu(x):
    return F.silu(x) / 0.596


def reference_mp_sum(a, b, t):
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


def reference_mp_conv(conv: MPConv, x, gain=1.0):
    w = conv.weight.to(torch.promote_types(conv.weight.dtype, torch.float32))
    if conv.training:
        with torch.no_grad():
            conv.weight.copy_(reference_normalize(w))
    w = reference_normalize(w) * (gain / math.sqrt(w[0].numel()))
    w = w.to(x.dtype)
    return x @ w.t() if w.ndim == 2 else F.conv2d(x, w, padding=(w.shape[-1] // 2,))


def reference_resample(x, mode):
    if mode == "down":
        return F.avg_pool2d(x, 2)
    return x if mode == "keep" else F.interpolate(x, scale_factor=2, mode="nearest")


def reference_block(block: EDM2Block, x, emb):
    x = reference_resample(x, block.resample_mode)
    if block.flavor == "enc":
        if block.conv_skip is not None:
            x = block.conv_skip(x)
        x = reference_normalize(x, dim=1)
    y = block.conv_res0(reference_mp_silu(x))
    c = block.emb_linear(emb, gain=block.emb_gain) + 1
    y = reference_mp_silu(y * c[:, :, None, None].to(y.dtype))
    y = block.conv_res1(y)
    if block.flavor == "dec" and block.conv_skip is not None:
        x = block.conv_skip(x)
    x = reference_mp_sum(x, y, t=block.res_balance)
    if block.num_heads != 0:
        y = block.attn_qkv(x)
        y = y.reshape(y.shape[0], block.num_heads, -1, 3, y.shape[2] * y.shape[3])
        q, k, v = reference_normalize(y, dim=2).unbind(3)
        w = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
        y = torch.einsum("nhqk,nhck->nhcq", w, v)
        y = block.attn_proj(y.reshape(*x.shape))
        x = reference_mp_sum(x, y, t=block.attn_balance)
    if block.clip_act is not None:
        x = x.clip(-block.clip_act, block.clip_act)
    return x


def as_reference(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` whose MPConvs and EDM2Blocks run the formulas above."""
    ref = copy.deepcopy(net)
    for module in ref.modules():
        if isinstance(module, MPConv):
            module.forward = lambda x, gain=1.0, conv=module: reference_mp_conv(conv, x, gain)
        if isinstance(module, EDM2Block):
            module.forward = lambda x, emb, block=module: reference_block(block, x, emb)
    return ref


# --- the comparisons --------------------------------------------------------------------------------------


def small_unet(clip_act=256) -> EDM2UNet:
    torch.manual_seed(0)
    net = EDM2UNet(8, 1, label_dim=3, model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                   channels_per_head=4, clip_act=clip_act)
    with torch.no_grad():  # learned gains away from their zero init, so every branch carries signal
        for index, p in enumerate(net.parameters()):
            if p.ndim == 0:
                p.fill_(0.5 + 0.1 * (index % 7))
    return net


def inputs(batch=6, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    t, x = torch.randn(batch, generator=g) / 4, torch.randn(batch, 1, 8, 8, generator=g)
    return t.to(dtype), x.to(dtype), torch.arange(batch) % 3


def assert_close_to_round_off(actual, expected):
    scale = max(expected.abs().max().item(), 1.0)
    tolerance = 1e-10 if expected.dtype == torch.float64 else 2e-5
    torch.testing.assert_close(actual, expected, rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("clip_act", [256, 0.7])  # 0.7: clips many activations
def test_unet_outputs_gradients_and_stored_weights_match_the_released_formulas(mode, clip_act):
    net = small_unet(clip_act).double()
    ref = as_reference(net)
    t, x, labels = inputs(dtype=torch.float64)
    for model in (net, ref):
        getattr(model, mode)()
    for _ in range(2):  # the second call sees the weights the first one renormalised (training mode)
        out, out_ref = net(t, x, labels), ref(t, x, labels)
        assert_close_to_round_off(out, out_ref)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        (out * weights).sum().backward()
        (out_ref * weights).sum().backward()
        for p, p_ref in zip(net.parameters(), ref.parameters()):
            assert_close_to_round_off(p.grad, p_ref.grad)
            assert_close_to_round_off(p.detach(), p_ref.detach())
            p.grad, p_ref.grad = None, None


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_float32_outputs_match_to_round_off(mode):
    net = small_unet()
    ref = as_reference(net)
    t, x, labels = inputs()
    net.train(mode == "train"), ref.train(mode == "train")
    assert_close_to_round_off(net(t, x, labels), ref(t, x, labels))


def test_eval_call_without_gradient_matches_and_repeats_exactly():
    net = small_unet()
    ref = as_reference(net)
    t, x, labels = inputs()
    net.eval(), ref.eval()
    with torch.no_grad():
        first = net(t, x, labels)
        assert_close_to_round_off(first, ref(t, x, labels))
        assert torch.equal(net(t, x, labels), first)


@pytest.mark.parametrize("dim", [1, 2, (1, 3), None])
def test_normalize_matches_vector_norm_value_and_gradient(dim):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, generator=g)
    x[0, :, 1, 2] = 0  # a zero pixel: vector_norm's gradient there is 0, not NaN
    x[1, 2, 3, :] = 0
    x.requires_grad_(True)
    upstream = torch.randn(x.shape, dtype=torch.float64, generator=g)
    norm = torch.linalg.vector_norm(x, dim=dim if dim is not None else (1, 2, 3), keepdim=True)
    expected = x / torch.add(1e-4, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    (grad_expected,) = torch.autograd.grad((expected * upstream).sum(), x)
    actual = normalize(x, dim=dim)
    (grad_actual,) = torch.autograd.grad((actual * upstream).sum(), x)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_actual, grad_expected, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(grad_actual).all()


def test_normalize_gradcheck_float64():
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: normalize(v, dim=1), (x,))
    assert torch.autograd.gradcheck(lambda v: normalize(v, dim=(1, 2)), (x,))


@pytest.mark.parametrize("mode", ["down", "up"])
def test_resample_equals_average_pooling_and_nearest_upsampling_exactly(mode):
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    out, expected = resample(x, mode), reference_resample(x, mode)
    assert torch.equal(out, expected)
    upstream = torch.randn(out.shape)
    assert torch.equal(torch.autograd.grad((out * upstream).sum(), x)[0],
                       torch.autograd.grad((expected * upstream).sum(), x)[0])


def test_a_nan_activation_is_clipped_as_clip_would():
    net = small_unet(clip_act=256)
    block = next(m for m in net.modules() if isinstance(m, EDM2Block))
    ref = as_reference(block)
    x, emb = torch.randn(2, block.conv_res0.in_channels, 8, 8), torch.randn(2, block.emb_linear.in_channels)
    x[0, 0, 0, 0] = float("nan")
    block.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x, emb), ref(x, emb), equal_nan=True, rtol=0, atol=1e-5)
