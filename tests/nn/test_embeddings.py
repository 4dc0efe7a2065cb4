import math

import pytest
import torch
from torch import nn

from pynodeta.nn import (
    ConcatConv2d,
    LinearTimestepEmbedding,
    PositionalTimestepEmbedding,
    SinusoidalTimestepEmbedding,
    TimeSequential,
    apply_bias_init_policy,
    make_norm,
    sinusoidal_timestep_embedding,
)


def test_sinusoidal_embedding_matches_the_diffusers_formula():
    t = torch.tensor([0.0, 1.0, 250.0], dtype=torch.float64)
    # dim 4, shift 1: half = 2, frequencies exp(-ln(1e4)·i/(2-1)) = [1, 1e-4]
    freqs = torch.tensor([1.0, 1e-4], dtype=torch.float64)
    sin, cos = torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)
    torch.testing.assert_close(sinusoidal_timestep_embedding(t, 4), torch.cat([sin, cos], 1))
    flipped = sinusoidal_timestep_embedding(t, 4, flip_sin_to_cos=True)
    torch.testing.assert_close(flipped, torch.cat([cos, sin], 1))
    # shift 0 (ADM): frequencies exp(-ln(1e4)·i/2) = [1, 1e-2]; odd dim pads one zero column
    emb = sinusoidal_timestep_embedding(t, 5, downscale_freq_shift=0)
    assert emb.shape == (3, 5) and torch.all(emb[:, 4] == 0)
    assert emb[2, 1].item() == pytest.approx(math.sin(250.0 * 1e-2))
    emb = sinusoidal_timestep_embedding(t, 4, max_period=100.0, scale=2.0)
    assert emb[1, 1].item() == pytest.approx(math.sin(2.0 * 1e-2))


def _diffusers_get_timestep_embedding(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1.0,
                                      scale=1.0, max_period=10000):
    """diffusers.models.embeddings.get_timestep_embedding, written out."""
    half_dim = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(start=0, end=half_dim, dtype=torch.float32)
    exponent = exponent / (half_dim - downscale_freq_shift)
    emb = torch.exp(exponent)
    emb = timesteps[:, None].float() * emb[None, :]
    emb = scale * emb
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half_dim:], emb[:, :half_dim]], dim=-1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float32])
@pytest.mark.parametrize("options", [dict(), dict(flip_sin_to_cos=True, downscale_freq_shift=0.0)])
def test_sinusoidal_embedding_of_integer_timesteps_matches_diffusers(dtype, options):
    # integer DDPM timesteps: the frequencies (all < 1 but the first) must not be cast to int
    t = torch.tensor([0, 1, 17, 250, 999]).to(dtype)
    expected = _diffusers_get_timestep_embedding(t, 33, **options)
    emb = sinusoidal_timestep_embedding(t, 33, **options)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb, expected, rtol=0, atol=1e-5)


def test_sinusoidal_embedding_rejects_bad_input():
    with pytest.raises(ValueError, match=r"t must be a 1-D \(batch,\) tensor"):
        sinusoidal_timestep_embedding(torch.zeros(2, 2), 4)
    with pytest.raises(ValueError, match="dim // 2 must exceed downscale_freq_shift"):
        sinusoidal_timestep_embedding(torch.zeros(2), 2)


def test_linear_embedding_adds_t_times_v_per_channel():
    emb = LinearTimestepEmbedding(3)
    x = torch.zeros(2, 3, 4, 4)
    y = emb(torch.tensor([0.5, 2.0]), x)
    torch.testing.assert_close(y[1, :, 0, 0], 2.0 * emb.v.detach())
    assert torch.all(y[0] == y[0, :, :1, :1])  # constant over space


def test_sinusoidal_embedding_is_a_per_channel_offset():
    emb = SinusoidalTimestepEmbedding(3, embedding_dim=8)
    y = emb(0.3, torch.zeros(2, 3, 4, 4))
    assert torch.all(y == y[:, :, :1, :1]) and not torch.allclose(y[:, 0], y[:, 1])


@pytest.mark.parametrize("mode", ["linear", "mlp"])
def test_positional_embedding_is_one_map_shared_across_channels(mode):
    emb = PositionalTimestepEmbedding(4, 5, mode=mode)
    x = torch.randn(2, 3, 4, 5)
    added = emb(torch.tensor([0.1, 0.8]), x) - x
    torch.testing.assert_close(added[:, 0], added[:, 2])
    assert added[0, 0].std() > 0  # a spatial pattern, not a constant
    assert not torch.allclose(added[0], added[1])


def test_positional_embedding_errors():
    with pytest.raises(ValueError, match=r"x must be \(batch, channels, 4, 5\)"):
        PositionalTimestepEmbedding(4, 5)(0.1, torch.randn(1, 2, 5, 4))
    with pytest.raises(ValueError, match="mode must be 'linear' or 'mlp'"):
        PositionalTimestepEmbedding(4, 5, mode="sin")
    with pytest.raises(ValueError, match="only apply to mode='mlp'"):
        PositionalTimestepEmbedding(4, 5, flip_sin_to_cos=True)


def test_concat_conv_per_sample_times_and_transpose():
    conv = ConcatConv2d(2, 3, kernel_size=4, stride=2, padding=1, transpose=True)
    x = torch.randn(2, 2, 5, 5)
    y = conv(torch.tensor([0.1, 0.9]), x)
    assert y.shape == (2, 3, 10, 10)
    torch.testing.assert_close(y[1:], conv(0.9, x[1:]))


def test_bias_init_policy_zeroes_operand_biases_only():
    torch.manual_seed(0)
    model = TimeSequential(
        ConcatConv2d(3, 4, padding=1),
        make_norm("gn", 4, groups=2),
        SinusoidalTimestepEmbedding(4, embedding_dim=8),
        PositionalTimestepEmbedding(6, 6, mode="mlp", embedding_dim=8),
        nn.Conv2d(4, 4, 1),
    )
    norm_bias_before = model[1].bias.detach().clone()
    report = apply_bias_init_policy(model)
    assert report["zeroed"] == ["0.conv.bias", "4.bias"]
    assert report["kept"] == ["2.mlp.linear_1.bias", "2.mlp.linear_2.bias",
                              "3.mlp.linear_1.bias", "3.mlp.linear_2.bias"]
    assert torch.all(model[0].conv.bias == 0) and torch.all(model[4].bias == 0)
    assert torch.all(model[2].mlp.linear_1.bias != 0) and torch.all(model[3].mlp.linear_2.bias != 0)
    torch.testing.assert_close(model[1].bias, norm_bias_before)
    # A custom predicate decides the branch by name.
    report = apply_bias_init_policy(model, timestep_branch=lambda name, m: name == "4")
    assert "4.bias" in report["kept"] and "2.mlp.linear_1.bias" in report["zeroed"]
