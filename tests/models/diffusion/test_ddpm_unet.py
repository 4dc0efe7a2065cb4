"""DDPMUNet: shapes, per-sample independence, the seed-001 options and their effect on the time signal."""

import pytest
import torch
from torch import nn

from pynodeta.diagnose import time_awareness
from pynodeta.models import DDPMUNet
from pynodeta.models.diffusion import TimeProjection

TINY = dict(image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
            dropout=0.0, norm_groups=2)
TIMES = [0.0, 250.0, 500.0, 750.0, 999.0]


def _tiny(**options) -> DDPMUNet:
    torch.manual_seed(0)
    net = DDPMUNet(**{**TINY, **options})
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
    net = _tiny(post_time_groups="channels").eval()
    x = torch.randn(3, 1, 8, 8)
    outputs = torch.stack([net(t, x) for t in TIMES])
    torch.testing.assert_close(outputs, outputs[:1].expand_as(outputs), rtol=0, atol=1e-5)
    assert (outputs[0] != 0).any()


@pytest.mark.parametrize("vanishing", [dict(post_time_groups="channels"), dict(post_time_norm="batch")])
def test_audit_finds_the_vanishing_variants(vanishing):
    report = time_awareness(_tiny(**vanishing), torch.randn(6, 1, 8, 8), TIMES)
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
    (dict(norm_groups=3), "dividing"),
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
