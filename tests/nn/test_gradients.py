"""gradcheck every layer in float64 with respect to its input, its parameters and t where it is a tensor."""

import pytest
import torch
from torch import nn

from pynodeta.nn import (
    ConcatConv2d,
    ConcatLinear,
    LinearTimestepEmbedding,
    PositionalTimestepEmbedding,
    SinusoidalTimestepEmbedding,
    TABatchNorm1d,
    TABatchNorm2d,
    TimeSequential,
    make_norm,
    no_stat_updates,
)

from .nn_testing import gradcheck_module

D = torch.float64


def _t(value=0.437):
    return torch.tensor(value, dtype=D, requires_grad=True)


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: ConcatConv2d(2, 3, padding=1), (2, 2, 4, 4)),
        (lambda: ConcatConv2d(2, 3, kernel_size=2, stride=2, transpose=True), (2, 2, 3, 3)),
        (lambda: ConcatLinear(3, 2), (4, 3)),
        (lambda: LinearTimestepEmbedding(3), (2, 3, 2, 2)),
        (lambda: SinusoidalTimestepEmbedding(3, embedding_dim=4, hidden_dim=5), (2, 3, 2, 2)),
        (lambda: PositionalTimestepEmbedding(3, 3), (2, 2, 3, 3)),
        (lambda: PositionalTimestepEmbedding(3, 3, mode="mlp", embedding_dim=4, hidden_dim=5), (2, 2, 3, 3)),
    ],
    ids=["concatconv", "concatconv-transpose", "concatlinear", "linear-emb", "sinusoidal-emb",
         "positional-linear", "positional-mlp"],
)
def test_time_dependent_layers(build, shape):
    torch.manual_seed(0)
    assert gradcheck_module(build(), _t(), torch.randn(*shape, dtype=D, requires_grad=True))


def _randomised(layer):
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
    return layer


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls, shape", [(TABatchNorm2d, (4, 3, 2, 2)), (TABatchNorm1d, (5, 3))])
def test_tabn(cls, shape, train):
    torch.manual_seed(0)
    layer = _randomised(cls(3, M=4)).train(train)
    x = torch.randn(*shape, dtype=D, requires_grad=True)
    with no_stat_updates():
        assert gradcheck_module(layer, _t(0.6), x)


def test_tabn_per_sample_times_in_eval():
    torch.manual_seed(0)
    layer = _randomised(TABatchNorm2d(3, M=4)).eval()
    t = torch.tensor([0.1, 0.6, 0.93], dtype=D, requires_grad=True)
    assert gradcheck_module(layer, t, torch.randn(3, 3, 2, 2, dtype=D, requires_grad=True))


@pytest.mark.parametrize("kind", ["popti-bn", "minibatch-bn", "gn", "ln", "in"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_baseline_norms(kind, train):
    torch.manual_seed(0)
    layer = make_norm(kind, 4, **({"groups": 2} if kind == "gn" else {})).train(train)
    x = torch.randn(3, 4, 2, 2, dtype=D, requires_grad=True)
    with no_stat_updates():
        assert gradcheck_module(_FixedTime(layer), x)


class _FixedTime(nn.Module):
    """Adapts a layer that ignores t to gradcheck over x and parameters only."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(0.5, x)


def test_time_sequential_stack():
    torch.manual_seed(0)
    model = TimeSequential(ConcatConv2d(2, 3), TABatchNorm2d(3, M=4), nn.Tanh(),
                           PositionalTimestepEmbedding(2, 2))
    x = torch.randn(3, 2, 4, 4, dtype=D, requires_grad=True)
    with no_stat_updates():
        assert gradcheck_module(model, _t(0.3), x)
