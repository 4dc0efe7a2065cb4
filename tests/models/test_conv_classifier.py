"""The convolutional NODE classifier (seed 001): pipeline, time injections, vanishing embedding, bias init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pynodeta.models import ACTIVATIONS, NODE_SOLVER, ConvODEClassifier
from pynodeta.nn import ConcatConv2d, LinearTimestepEmbedding, PositionalTimestepEmbedding, TimeGroupNorm
from pynodeta.ode import IController, SolverSettings

from .helpers import RK4


def tiny(**kwargs) -> ConvODEClassifier:
    return ConvODEClassifier(**{"in_shape": (1, 8, 8), "num_classes": 3, "channels": 8, "solver": RK4, **kwargs})


def test_pipeline_matches_the_paper():
    model = tiny(norm="gn", groups=2)
    kinds = [type(m) for m in model.ode.func]
    assert kinds == [TimeGroupNorm, nn.ReLU, ConcatConv2d, TimeGroupNorm, nn.ReLU, ConcatConv2d, TimeGroupNorm]
    assert model.ode.func[0].num_groups == 2
    head = [type(m) for m in model.head]
    assert head == [nn.GroupNorm, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Linear]
    assert model.stem(torch.randn(2, 1, 8, 8)).shape == (2, 8, 2, 2)  # two stride-2 residual blocks


def test_stem_strides_and_paper_defaults():
    assert tiny(stem_strides=(2, 1)).stem(torch.randn(1, 1, 8, 8)).shape == (1, 8, 4, 4)
    paper = ConvODEClassifier((3, 32, 32), 10)
    assert paper.ode.func[0].num_groups == 32 and paper.ode.func[2].conv.out_channels == 256
    assert paper.ode.solver == NODE_SOLVER == SolverSettings(controller=IController(rtol=1e-3, atol=1e-3), adjoint=True)


@pytest.mark.parametrize("activation", ["relu", "silu", "elu", "softplus", "sigmoid"])
def test_every_activation(activation):
    model = tiny(activation=activation)
    assert isinstance(model.ode.func[1], ACTIVATIONS[activation])
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def _depends_on_time(model: ConvODEClassifier) -> bool:
    h = torch.randn(4, 8, 2, 2)
    model.eval()
    with torch.no_grad():
        # float32 rounding leaves differences up to ~1e-5 where t cancels; a real dependence is O(1)
        return not torch.allclose(model.ode.func(0.1, h), model.ode.func(0.9, h), atol=1e-4)


def test_additive_embedding_vanishes_under_instance_norm_and_positional_restores_it():
    # conv + t·v per channel followed by a per-channel norm: f(t, h) does not depend on t (seed 001)
    assert not _depends_on_time(tiny(norm="in", time_injection="additive"))
    assert _depends_on_time(tiny(norm="in", time_injection="additive", positional=True))
    assert _depends_on_time(tiny(norm="gn", groups=1, time_injection="additive"))


def test_positional_embedding_sits_after_each_conv():
    model = tiny(time_injection="additive", positional=True, positional_mode="mlp")
    kinds = [type(m) for m in model.ode.func]
    assert kinds.count(PositionalTimestepEmbedding) == 2 and kinds.count(LinearTimestepEmbedding) == 2
    assert kinds.index(PositionalTimestepEmbedding) == kinds.index(LinearTimestepEmbedding) + 1
    assert model.ode.func[kinds.index(PositionalTimestepEmbedding)].mode == "mlp"


def test_bias_init_policy_zeroes_operand_biases_only():
    torch.manual_seed(0)
    model = tiny(bias_init_policy=True, positional=True, positional_mode="mlp")
    convs = [m for m in model.ode.func if isinstance(m, ConcatConv2d)]
    assert all(torch.count_nonzero(c.conv.bias) == 0 for c in convs)
    embedding = next(m for m in model.ode.func if isinstance(m, PositionalTimestepEmbedding))
    assert torch.count_nonzero(embedding.mlp.linear_1.bias) > 0
    assert all(torch.count_nonzero(c.conv.bias) > 0 for c in tiny().ode.func if isinstance(c, ConcatConv2d))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(activation="gelu"), "unknown activation 'gelu'; valid activations: relu, silu"),
        (dict(time_injection="film"), "time_injection must be one of"),
        (dict(norm="tabn", groups=2), "groups only applies to norm='gn'"),
        (dict(norm="gn", groups=3), "groups must divide channels=8"),
        (dict(stem_strides=(4, 2)), "stem_strides"),
        (dict(in_shape=(64,)), r"in_shape must be \(channels, height, width\)"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(norm="tabn", t_span=(-1.0, 1.0), norm_options={"T": 1.0}), "must cover t_span"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)
