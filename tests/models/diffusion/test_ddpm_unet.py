"""DDPMUNet: shapes, per-sample independence, the seed-001 options and their effect on the time signal."""

import pytest
import torch
from torch import nn

from pynodeta.diagnose import time_awareness
from pynodeta.models import DDPMUNet
from pynodeta.models.diffusion import TimeProjection
from pynodeta.nn import TimeCancellationWarning, group_count

TINY = dict(image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
            dropout=0.0, norm_groups=2)
TIMES = [0.0, 250.0, 500.0, 750.0, 999.0]


def _tiny(**options) -> DDPMUNet:
    return _with_weights(DDPMUNet, **{**TINY, **options})


def _with_weights(build, **options) -> DDPMUNet:
    torch.manual_seed(0)
    net = build(**options)
    # DDPM starts every residual branch and the output at zero; give them weights so that t can show
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d) and not module.weight.any():
                nn.init.normal_(module.weight, std=0.2)
    return net


@pytest.mark.parametrize("injection", ["add", "scale_shift"])
def test_output_shape_and_per_sample_times(injection):
    net = _tiny(injection=injection, out_channels=3, channel_mult=(1, 2, 2), attention_resolutions=(2,))
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    out = net(t, x)
    assert out.shape == (4, 3, 8, 8)
    # GroupNorm statistics are per sample: each row equals the network run on that row alone
    alone = torch.cat([net(t[i : i + 1], x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)
    # a scalar time is the same time for every sample
    torch.testing.assert_close(net(500, x), net(torch.full((4,), 500), x))


def test_starts_by_predicting_zero():
    net = DDPMUNet(**TINY)
    assert not net(torch.tensor([3, 7]), torch.randn(2, 1, 8, 8)).any()


def test_group_norm_with_one_group_per_channel_makes_the_output_independent_of_time():
    # seed 001: an added per-channel offset is removed exactly by a per-channel normalisation after it
    with pytest.warns(TimeCancellationWarning):
        net = _tiny(post_time_groups="channels").eval()
    x = torch.randn(3, 1, 8, 8)
    outputs = torch.stack([net(t, x) for t in TIMES])
    torch.testing.assert_close(outputs, outputs[:1].expand_as(outputs), rtol=0, atol=1e-5)
    assert (outputs[0] != 0).any()


@pytest.mark.parametrize("vanishing", [dict(post_time_groups="channels"), dict(post_time_norm="batch")])
def test_audit_finds_the_vanishing_variants(vanishing):
    with pytest.warns(TimeCancellationWarning, match="down.0.block.norm2"):
        net = _tiny(**vanishing)
    report = time_awareness(net, torch.randn(6, 1, 8, 8), TIMES)
    assert report.vanishing
    assert any(f.verdict == "cancelled" for f in report.findings)


@pytest.mark.parametrize("fix", [
    dict(post_time_groups="channels", positional_embedding=True),  # fix 1: an H×W map survives G = C
    dict(norm_groups=1),                                           # fix 3: one group keeps per-channel offsets
    dict(post_time_groups="channels", injection="scale_shift"),    # ADM: time enters after the norm
])
def test_audit_finds_time_restored_by_a_fix(fix):
    report = time_awareness(_tiny(**fix), torch.randn(6, 1, 8, 8), TIMES)
    assert not report.vanishing
    assert report.output_sensitivity > 1e-3


def test_zero_operand_bias_policy_keeps_the_timestep_branch_biases():
    net = _tiny(bias_init="zero_operand", positional_embedding=True)
    assert not net.conv_in.bias.any() and not net.down[0].block.conv1.bias.any()
    assert net.time_embedding.linear_1.bias.any()
    projections = [m for m in net.modules() if isinstance(m, TimeProjection)]
    assert projections and all(p.linear.bias.any() for p in projections)
    assert net.down[0].block.positional.mlp.linear_1.bias.any()


@pytest.mark.parametrize("options, message", [
    (dict(image_size=6, channel_mult=(1, 2, 2)), "divisible"),
    (dict(attention_resolutions=(16,)), "attention_resolutions"),
    (dict(norm_groups=3), "groups=3 does not divide"),
    (dict(injection="concat"), "injection"),
    (dict(bias_init="zeros"), "bias_init"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_options_name_the_argument(options, message):
    with pytest.raises(ValueError, match=message):
        DDPMUNet(**{**TINY, **options})


def test_wrong_input_shape_is_refused():
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 1, 8, 8\)"):
        DDPMUNet(**TINY)(torch.tensor([1]), torch.randn(1, 3, 8, 8))


def _no_time_cancellation_warning(**options) -> DDPMUNet:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", TimeCancellationWarning)
        return _with_weights(DDPMUNet, **options)


def test_defaults_keep_time_where_32_groups_on_32_channels_cancel_it():
    # the issue: DDPMUNet(channels=32) with the old default norm_groups=32 put G = C after every
    # injection of the first level (survival ~1e-14); the default is now nn.group_count's "auto" rule
    options = dict(image_size=8, channels=32, channel_mult=(1,), num_res_blocks=1, attention_resolutions=())
    net = _no_time_cancellation_warning(**options)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert all(m.num_groups == group_count(m.num_channels, "auto") for m in norms)
    assert net.down[0].block.norm2.num_groups == 8  # min(32 // 4, 32)
    x = torch.randn(4, 1, 8, 8)
    assert not time_awareness(net, x, TIMES).vanishing
    with pytest.warns(TimeCancellationWarning,
                      match=r"^down\.0\.block\.norm2: GroupNorm\(32 groups, 32 channels\) right after the time "
                            r"injection cancels .*\(and 4 more such layers\).*norm_groups='auto' or 1"):
        old_default = _with_weights(DDPMUNet, **options, norm_groups=32)
    report = time_awareness(old_default, x, TIMES)
    assert report.vanishing
    assert max(f.survival for f in report.findings if f.verdict == "cancelled") < 1e-6


@pytest.mark.parametrize("fix", [dict(norm_groups=1), dict(norm_groups=8, positional_embedding=True),
                                 dict(norm_groups=8, injection="scale_shift")])
def test_choices_that_keep_time_do_not_warn(fix):
    _no_time_cancellation_warning(**{**TINY, **fix})


def test_warning_points_at_the_line_that_built_the_model():
    with pytest.warns(TimeCancellationWarning) as record:
        DDPMUNet(**{**TINY, "norm_groups": 8})
    assert record[0].filename == __file__


def _conditional(num_classes=3, **options) -> DDPMUNet:
    net = _tiny(num_classes=num_classes, **options)
    with torch.no_grad():
        nn.init.normal_(net.label_embedding.weight)
    return net


def test_all_zero_labels_are_the_unconditional_network():
    net = _conditional()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 500, 999])
    unconditional = net(t, x)
    torch.testing.assert_close(net(t, x, torch.zeros(3, 3)), unconditional, rtol=0, atol=0)
    # the same weights without the label map: the unconditional path is exactly the plain network
    plain = _tiny()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("label_embedding")})
    torch.testing.assert_close(plain(t, x), unconditional, rtol=0, atol=0)


def test_labels_change_the_output_and_train_the_label_embedding():
    net = _conditional()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([100, 100, 100])
    labels = torch.eye(3)
    out = net(t, x[:1].expand(3, -1, -1, -1), labels)  # one image and time, three classes
    assert (out[0] - out[1]).abs().max() > 1e-4 and (out[1] - out[2]).abs().max() > 1e-4
    net(t, x, labels).square().sum().backward()
    grad = net.label_embedding.weight.grad
    assert grad is not None and grad.abs().sum(dim=0).gt(0).all()  # every class's column learns
    net.zero_grad()
    net(t, x, torch.zeros(3, 3)).square().sum().backward()
    assert not net.label_embedding.weight.grad.any()  # a dropped label (zero row) teaches it nothing


def test_bad_labels_name_the_fix():
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="unconditional DDPMUNet; build it with num_classes"):
        _tiny()(t, x, torch.zeros(2, 3))
    net = _conditional(num_classes=3)
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*one_hot\(c, 3\)"):
        net(t, x, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        net(t, x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        DDPMUNet(**TINY, num_classes=0)
