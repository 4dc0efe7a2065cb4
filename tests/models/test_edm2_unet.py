"""EDM2 U-Net: magnitudes at initialisation at every noise level, batch independence, labels, the
time-awareness audit, and the eval-mode promise that weights are never modified."""

import math

import pytest
import torch

from pynodeta.diagnose import time_awareness
from pynodeta.models.diffusion.edm2_unet import EDM2Block, EDM2UNet


def _tiny(label_dim=0, **options):
    torch.manual_seed(0)
    return EDM2UNet(16, 3, label_dim=label_dim, model_channels=32, channel_mult=(1, 2, 2), num_blocks=2,
                    attn_resolutions=(8,), channels_per_head=16, **options)


@pytest.mark.parametrize("sigma", [0.002, 0.5, 80.0])
def test_every_block_keeps_unit_magnitude_at_init(sigma):
    net = _tiny()
    magnitudes = {}
    for name, module in net.named_modules():
        if isinstance(module, EDM2Block):
            module.register_forward_hook(
                lambda mod, args, out, name=name: magnitudes.__setitem__(name, out.pow(2).mean().sqrt().item()))
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # c_in·x has unit magnitude
    net(torch.full((8,), math.log(sigma) / 4), x)
    assert len(magnitudes) == 21
    for name, rms in magnitudes.items():
        assert 0.75 < rms < 1.25, (name, rms)


def test_output_is_zero_at_init_and_samples_are_independent():
    net = _tiny()
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(net(0.3, x), torch.zeros_like(x))  # out_gain starts at 0 (EDM2 config G)
    with torch.no_grad():
        net.out_gain.fill_(1.0)
        for block in net.modules():
            if isinstance(block, EDM2Block):
                block.emb_gain.fill_(0.5)
    t = torch.tensor([-1.0, 0.0, 0.5, 1.0])
    together = net(t, x)
    alone = torch.cat([net(t[i : i + 1], x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert (together[0] - together[1]).abs().max() > 1e-3


def test_integer_and_one_hot_labels_agree_and_bad_shapes_are_refused():
    net = _tiny(label_dim=5)
    with torch.no_grad():
        net.out_gain.fill_(1.0)
        for block in net.modules():
            if isinstance(block, EDM2Block):
                block.emb_gain.fill_(1.0)
    x, labels = torch.randn(3, 3, 16, 16), torch.tensor([0, 4, 2])
    by_index = net(0.0, x, labels)
    torch.testing.assert_close(by_index, net(0.0, x, torch.nn.functional.one_hot(labels, 5).float()))
    assert not torch.allclose(by_index, net(0.0, x, torch.tensor([1, 1, 1])))
    with pytest.raises(ValueError, match="class_labels must be"):
        net(0.0, x, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"x must be \(batch, 3, 16, 16\)"):
        net(0.0, torch.zeros(3, 1, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        EDM2UNet(12, 3, model_channels=16, channel_mult=(1, 2, 2, 2))


@pytest.mark.parametrize("size", [7, 15, 32])
def test_inputs_of_another_size_are_refused(size):
    # 7x7 or 15x15 used to crash inside torch.cat, 32x32 to run with every level shifted
    net = _tiny()
    message = rf"x must be \(batch, 3, 16, 16\).*img_resolution=16.*got \(2, 3, {size}, {size}\)"
    with pytest.raises(ValueError, match=message):
        net(0.0, torch.zeros(2, 3, size, size))


def test_attention_resolutions_must_be_among_the_networks_resolutions():
    with pytest.raises(ValueError, match=r"attn_resolutions \[3\] are not among .* \[16, 8, 4\]"):
        EDM2UNet(16, 3, model_channels=32, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(8, 3))
    net = EDM2UNet(16, 3, model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(4,),
                   channels_per_head=16)
    with_attention = sorted(name for name, block in net.named_modules()
                            if isinstance(block, EDM2Block) and block.attn_qkv is not None)
    assert with_attention == ["dec.4x4_block0", "dec.4x4_block1", "dec.4x4_in0", "enc.4x4_block0"]


def test_eval_mode_never_modifies_weights_and_training_normalises_them():
    net = _tiny()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1:
                p.mul_(3.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()(0.0, torch.randn(2, 3, 16, 16))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    net.train()(0.0, torch.randn(2, 3, 16, 16))
    weight = net.enc["16x16_conv"].weight.detach()
    torch.testing.assert_close(weight.flatten(1).pow(2).mean(1).sqrt(), torch.ones(32), atol=1e-3, rtol=0)


def test_time_awareness_audit_runs_and_sees_the_zero_gains():
    torch.manual_seed(0)
    net = EDM2UNet(8, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                   channels_per_head=16)
    x, times = torch.randn(4, 1, 8, 8), [-1.0, 0.0, 0.5, 1.0]
    assert time_awareness(net, x, times).vanishing  # at init the output gain (and every emb_gain) is 0
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(1.0)
    report = time_awareness(net, x, times)
    assert not report.vanishing and report.output_sensitivity > 0.01


# Parameter counts of the paper's ImageNet-512 models (Karras et al. 2024, Table 2), in millions.
PAPER_PARAMETERS = {"xs": 125, "s": 280, "m": 498, "l": 777, "xl": 1119, "xxl": 1523}


@pytest.mark.parametrize("size", sorted(PAPER_PARAMETERS))
def test_preset_configs_build_the_papers_model_sizes(size):
    from importlib import resources

    import yaml

    from pynodeta.diffusion.edm2 import EDM2Precond

    text = resources.files("pynodeta.configs").joinpath(f"edm2_img512_{size}.yaml").read_text()
    options = yaml.safe_load(text)["model"]["init_args"]["model"]["init_args"]
    assert options["label_dim"] == 1000  # class-conditional on ImageNet, as the paper's models
    with torch.device("meta"):  # shapes only: no memory, no time
        net = EDM2Precond(EDM2UNet(**options))
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(PAPER_PARAMETERS[size], abs=0.5)
