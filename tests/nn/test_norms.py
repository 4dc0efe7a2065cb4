import pytest
import torch
from torch import nn

from pynodeta.nn import (
    NORM_KINDS,
    MiniBatchNorm2d,
    PopTIBatchNorm1d,
    PopTIBatchNorm2d,
    TABatchNorm1d,
    TABatchNorm2d,
    TimeGroupNorm,
    group_count,
    make_norm,
    no_stat_updates,
)

from .nn_testing import CallAgainInBackward


@pytest.mark.parametrize("kind", NORM_KINDS)
@pytest.mark.parametrize("dims, shape", [(2, (4, 8, 3, 3)), (1, (4, 8, 5))])
def test_every_kind_builds_and_takes_t(kind, dims, shape):
    norm = make_norm(kind, 8, dims=dims, **({"groups": "auto"} if kind == "gn" else {}))
    x = torch.randn(*shape)
    assert norm(0.3, x).shape == x.shape
    norm.eval()
    assert norm(0.3, x).shape == x.shape


@pytest.mark.parametrize("batch", [5, 4], ids=["batch_differs_from_C", "batch_equals_C"])
def test_instance_norm_refuses_a_batch_without_a_length_axis(batch):
    # torch would read (batch, C) as one unbatched (C, L) sample: an error about C, or, where batch == C,
    # each sample normalised over its channels
    norm = make_norm("in", 4, dims=1)
    with pytest.raises(ValueError, match=r"instance norm needs x of shape \(batch, C, L\).*use norm 'ln' or 'gn'"):
        norm(0.3, torch.randn(batch, 4))
    with pytest.raises(ValueError, match=r"instance norm needs x of shape \(batch, C, H, W\), got \(4, 3, 3\)"):
        make_norm("in", 4)(0.3, torch.randn(4, 3, 3))


def test_factory_classes_and_groups():
    assert isinstance(make_norm("tabn", 8, M=10, T=2.0), TABatchNorm2d)
    assert isinstance(make_norm("tabn", 8, dims=1), TABatchNorm1d)
    assert isinstance(make_norm("popti-bn", 8), PopTIBatchNorm2d)
    assert isinstance(make_norm("popti-bn", 8, dims=1), PopTIBatchNorm1d)
    assert isinstance(make_norm("minibatch-bn", 8), MiniBatchNorm2d)
    gn = make_norm("gn", 256, groups="auto")
    assert isinstance(gn, TimeGroupNorm) and gn.num_groups == 32
    assert make_norm("gn", 64, groups="auto").num_groups == 16
    assert make_norm("gn", 64, groups=1).num_groups == 1
    assert make_norm("ln", 64).num_groups == 1
    assert make_norm("gn", 18, groups="auto").num_groups == 3  # min(18 // 4, 32) = 4 does not divide 18


def test_group_count_rule():
    # "auto": Score-SDE's min(C // 4, 32) where it divides C, else the largest divisor below it
    for channels in (4, 8, 16, 32, 64, 128, 256, 512):
        assert group_count(channels, "auto") == min(channels // 4, 32)
    assert group_count(18, "auto") == 3 and group_count(3, "auto") == 1 and group_count(1, "auto") == 1
    assert group_count(12, "auto") == 3 and group_count(20, "auto") == 5
    for channels in range(1, 300):
        g = group_count(channels, "auto")
        assert channels % g == 0 and 1 <= g <= max(1, min(channels // 4, 32))
    # an int is the count itself: kept when it divides C, an error otherwise
    assert group_count(64, 32) == 32 and group_count(3, 3) == 3
    with pytest.raises(ValueError, match="groups=32 does not divide a layer's num_channels=3"):
        group_count(3, 32)
    with pytest.raises(ValueError, match="groups must be a positive int, 'auto' or 'channels'"):
        group_count(8, 0)
    # "channels": G = C, the per-channel normalisation that cancels a time offset (seed 001)
    assert group_count(32, "channels") == 32 and group_count(3, "channels") == 3


def test_factory_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown norm kind 'bn'; valid kinds: tabn, popti-bn, minibatch-bn"):
        make_norm("bn", 8)
    with pytest.raises(ValueError, match="kind='gn' needs groups"):
        make_norm("gn", 8)
    with pytest.raises(ValueError, match="groups=3 does not divide a layer's num_channels=8; pass a divisor"):
        make_norm("gn", 8, groups=3)
    with pytest.raises(ValueError, match="groups only applies to kind='gn'"):
        make_norm("tabn", 8, groups=2)
    with pytest.raises(ValueError, match=r"options \['M'\] do not apply to kind='popti-bn'"):
        make_norm("popti-bn", 8, M=10)
    with pytest.raises(ValueError, match="dims must be 1 or 2"):
        make_norm("none", 8, dims=3)


def test_popti_is_ordinary_batchnorm():
    torch.manual_seed(0)
    popti, bn = PopTIBatchNorm2d(4), nn.BatchNorm2d(4)
    x = torch.randn(6, 4, 3, 3) * 2 + 1
    torch.testing.assert_close(popti(0.1, x), bn(x))
    torch.testing.assert_close(popti(0.9, x), bn(x))  # one running pair for all times
    torch.testing.assert_close(popti.running_mean, bn.running_mean)
    with no_stat_updates():
        popti(0.5, x + 10)
    torch.testing.assert_close(popti.running_mean, bn.running_mean)
    popti.eval(), bn.eval()
    torch.testing.assert_close(popti(0.7, x), bn(x))


def test_minibatch_bn_uses_batch_statistics_at_test_time():
    norm = MiniBatchNorm2d(3, affine=False).eval()
    x = torch.randn(5, 3, 2, 2) * 4 + 2
    y = norm(0.5, x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    # ...so one sample's output depends on its batch, unlike TA-BN's.
    assert not torch.allclose(norm(0.5, x[:2])[0], y[0])


@pytest.mark.parametrize("update_in_backward", [False, True])
def test_popti_updates_in_a_backward_pass_only_when_asked(update_in_backward):
    popti = PopTIBatchNorm1d(3, momentum=0.5, update_stats_in_backward=update_in_backward)
    x = torch.ones(8, 3).cumsum(0).requires_grad_(True)  # batch mean 4.5
    CallAgainInBackward.apply(x, popti).sum().backward()
    expected = 4.5 * (1 - 0.5 ** (2 if update_in_backward else 1))
    torch.testing.assert_close(popti.running_mean, torch.full((3,), expected))
