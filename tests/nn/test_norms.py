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
    auto_groups,
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
    assert auto_groups(8) == 2


def test_factory_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown norm kind 'bn'; valid kinds: tabn, popti-bn, minibatch-bn"):
        make_norm("bn", 8)
    with pytest.raises(ValueError, match="kind='gn' needs groups"):
        make_norm("gn", 8)
    with pytest.raises(ValueError, match="positive int dividing num_channels=8, got 3"):
        make_norm("gn", 8, groups=3)
    with pytest.raises(ValueError, match=r"min\(18 // 4, 32\) = 4, which does not divide num_channels=18"):
        make_norm("gn", 18, groups="auto")
    with pytest.raises(ValueError, match=r"min\(2 // 4, 32\) = 0"):
        auto_groups(2)
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
