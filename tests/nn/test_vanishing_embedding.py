"""The vanishing timestep embedding (seed 001): per-channel normalisation after ConcatConv cancels t."""

import pytest
import torch
from torch import nn

from pynodeta.nn import ConcatConv2d, PositionalTimestepEmbedding, TABatchNorm2d, TimeSequential

T1, T2 = 0.2, 0.9


def _outputs(*layers, padding=0):
    torch.manual_seed(0)
    conv = ConcatConv2d(3, 4, kernel_size=3, padding=padding).double()
    model = TimeSequential(conv, *layers).double().train()
    x = torch.randn(6, 3, 7, 7, dtype=torch.float64)
    return model(T1, x), model(T2, x)


@pytest.mark.parametrize(
    "norm",
    [nn.BatchNorm2d(4), nn.InstanceNorm2d(4, affine=True), nn.GroupNorm(4, 4)],
    ids=["batchnorm", "instancenorm", "groupnorm-G=C"],
)
def test_per_channel_norm_makes_output_independent_of_t(norm):
    y1, y2 = _outputs(norm)
    # Conv([t, x]) = Conv_x(x) + t·v exactly up to round-off; the norm subtracts the per-channel mean.
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)


def test_conv_output_itself_depends_on_t():
    y1, y2 = _outputs()
    assert (y1 - y2).abs().max() > 1e-3


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [nn.GroupNorm(2, 4)],
        lambda: [PositionalTimestepEmbedding(5, 5), nn.BatchNorm2d(4)],
        lambda: [PositionalTimestepEmbedding(5, 5, mode="mlp", scale=10.0), nn.GroupNorm(4, 4)],
    ],
    ids=["groupnorm-G<C", "positional-linear+bn", "positional-mlp+gn"],
)
def test_t_survives_fewer_groups_and_positional_embedding(layers):
    y1, y2 = _outputs(*layers())
    assert (y1 - y2).abs().max() > 1e-3


def test_t_survives_tabn_through_its_affine_parameters():
    torch.manual_seed(1)
    tabn = TABatchNorm2d(4, M=10)
    with torch.no_grad():
        tabn.weight.uniform_(0.5, 1.5)
        tabn.bias.normal_()
    y1, y2 = _outputs(tabn)
    assert (y1 - y2).abs().max() > 1e-2


def test_zero_padding_leaves_only_a_border_signal():
    y1, y2 = _outputs(nn.InstanceNorm2d(4), padding=1)
    assert (y1 - y2).abs().max() > 1e-3
