"""The unmixed backbones: layer counts and channel plans of the paper, shapes, norms, options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pynodeta.models import build_backbone
from pynodeta.nn import NORM_KINDS, ConcatConv2d, ConcatLinear, TABatchNorm2d, TimeSequential


def concat_convs(module: nn.Module) -> list[ConcatConv2d]:
    return [m for m in module.modules() if isinstance(m, ConcatConv2d)]


@pytest.mark.parametrize(("name", "extra", "n_convs"),
                         [("conv4", None, 4), ("conv6", None, 6), ("conv7+L", 0, 7), ("conv7+L", 3, 10),
                          ("unet18", None, 18)])
@pytest.mark.parametrize("in_shape", [(1, 8, 8), (3, 7, 9), (1, 28, 28)])
def test_conv_backbones_keep_the_state_shape(name, extra, n_convs, in_shape):
    backbone = build_backbone(name, in_shape, width=2, norm="gn", extra_layers=extra)
    x = torch.randn(2, *in_shape)
    assert backbone(0.25, x).shape == x.shape
    assert len(concat_convs(backbone)) == n_convs


def test_paper_channel_plans_at_width_32():
    outs = [c.conv.out_channels for c in concat_convs(build_backbone("conv4", (3, 32, 32), norm="none"))]
    assert outs == [32, 64, 32, 3]
    outs = [c.conv.out_channels for c in concat_convs(build_backbone("conv6", (3, 32, 32), norm="none"))]
    assert outs == [32, 64, 128, 64, 32, 3]
    outs = [c.conv.out_channels for c in
            concat_convs(build_backbone("conv7+L", (3, 32, 32), norm="none", extra_layers=2))]
    assert outs == [32, 64, 128, 256, 256, 256, 64, 32, 3]
    outs = [c.conv.out_channels for c in concat_convs(build_backbone("unet18", (3, 32, 32), norm="none"))]
    assert outs == [32, 32, 64, 64, 128, 128, 256, 256, 128, 128, 128, 64, 64, 64, 32, 32, 32, 3]
    strides = [c.conv.stride[0] for c in concat_convs(build_backbone("conv6", (3, 32, 32), norm="none"))]
    assert strides == [2] * 6  # three ↓ and three ↑


def test_every_conv_is_followed_by_a_norm_and_only_the_last_lacks_relu():
    backbone = build_backbone("conv6", (3, 8, 8), width=2, norm="tabn")
    units = [m for m in backbone.modules() if isinstance(m, TimeSequential) and isinstance(m[0], ConcatConv2d)]
    assert len(units) == 6
    for unit in units[:-1]:
        assert [type(m) for m in unit] == [ConcatConv2d, TABatchNorm2d, nn.ReLU]
    assert [type(m) for m in units[-1]] == [ConcatConv2d, TABatchNorm2d]


@pytest.mark.parametrize("norm", NORM_KINDS)
def test_every_norm_kind_builds_and_runs(norm):
    backbone = build_backbone("conv4", (1, 8, 8), width=4, norm=norm)
    assert backbone(torch.tensor(0.5), torch.randn(3, 1, 8, 8)).shape == (3, 1, 8, 8)


def test_tabn_grid_follows_the_span_and_clamps_overshoot():
    backbone = build_backbone("conv4", (1, 8, 8), width=2, norm="tabn", t_span=(0.0, 2.0),
                              norm_options={"M": 10})
    layers = [m for m in backbone.modules() if isinstance(m, TABatchNorm2d)]
    assert {(m.t_min, m.t_max, m.M, m.outside) for m in layers} == {(0.0, 2.0, 10, "clamp")}
    with pytest.raises(ValueError, match="must cover t_span"):
        build_backbone("conv4", (1, 8, 8), norm="tabn", t_span=(0.0, 2.0), norm_options={"T": 1.0})


def test_mlp_backbone_norms_only_the_first_layers():
    backbone = build_backbone("mlp", (5,), width=7, depth=4, norm="popti-bn", norm_layers=2)
    kinds = [type(m).__name__ for m in backbone.layers]
    assert kinds == ["ConcatLinear", "PopTIBatchNorm1d", "ReLU", "ConcatLinear", "PopTIBatchNorm1d", "ReLU",
                     "ConcatLinear", "ReLU", "ConcatLinear"]
    assert backbone(0.1, torch.randn(4, 5)).shape == (4, 5)
    assert sum(isinstance(m, ConcatLinear) for m in backbone.modules()) == 4


def test_auto_groups_follow_each_layer_width_and_an_int_must_divide_every_width():
    backbone = build_backbone("conv4", (3, 8, 8), norm="gn", width=8)  # widths 8, 16, 8 and back to 3
    groups = [(m.num_channels, m.num_groups) for m in backbone.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert groups == [(8, 2), (16, 4), (8, 2), (3, 1)]
    with pytest.raises(ValueError, match=r"groups=2 does not divide a layer's num_channels=3.*groups='auto'"):
        build_backbone("conv4", (3, 8, 8), norm="gn", width=8, groups=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(name="conv5", in_shape=(1, 8, 8)), "unknown backbone 'conv5'; valid backbones: conv4, conv6"),
        (dict(name="conv4", in_shape=(1, 8, 8), norm="bn"), "unknown norm kind 'bn'"),
        (dict(name="conv4", in_shape=(1, 8, 8), extra_layers=2), "extra_layers only applies"),
        (dict(name="conv4", in_shape=(64,)), r"in_shape must be \(channels, height, width\)"),
        (dict(name="mlp", in_shape=(1, 8, 8)), r"in_shape must be \(features,\)"),
        (dict(name="conv4", in_shape=(1, 8, 8), norm="tabn", groups=4), "groups only applies to norm='gn'"),
        (dict(name="conv7+L", in_shape=(1, 8, 8), extra_layers=-1), "extra_layers"),
        (dict(name="mlp", in_shape=(4,), depth=2, norm_layers=3), "norm_layers must be in"),
    ],
)
def test_bad_backbone_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(kwargs.pop("name"), kwargs.pop("in_shape"), **kwargs)
