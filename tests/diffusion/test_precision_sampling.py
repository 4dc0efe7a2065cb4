"""Sampling with the network under autocast: the samplers' state stays float32 and the images stay close.

Tolerance: bf16 rounds every matmul/convolution input to a relative u = 2⁻⁸; a Heun run of 8 levels
(15 denoiser calls) contracts towards the data, so the errors do not compound: the images' relative RMS
difference from float32 was at most 1.5u on these networks; we allow 4u. fp16 (u = 2⁻¹¹, also run by
torch 2.13's CPU autocast) is held to the same 4u of its own.
"""

import pytest
import torch

import pynodeta.diffusion as pd
from pynodeta.models.diffusion.edm2_unet import EDM2UNet
from pynodeta.train import DiffusionModule, EDM2Objective
from pynodeta.train.diffusion_sampling import generate

UNIT_ROUNDOFF = {"bf16": 2.0**-8, "16": 2.0**-11}


def _edm2_module() -> DiffusionModule:
    torch.manual_seed(0)
    net = EDM2UNet(8, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                   channels_per_head=16)
    with torch.no_grad():  # a live network branch: the output gains start at 0
        for name, param in net.named_parameters():
            if name.endswith("gain"):
                param.fill_(1.0)
    return DiffusionModule(net, EDM2Objective(logvar_channels=16), averaging="none").eval()


def test_a_sampler_keeps_its_state_float32_while_the_network_runs_in_bf16():
    module = _edm2_module()
    seen = []
    module.model.out_conv.register_forward_hook(lambda layer, inputs, output: seen.append(output.dtype))
    states = []
    denoiser = pd.AutocastDenoiser(module.denoiser(), "bf16")
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    sigmas = pd.karras_sigmas(4)
    with torch.no_grad():
        x = pd.sample_heun(denoiser, noise * sigmas[0], sigmas,
                           callback=lambda info: states.append((info["x"].dtype, info["denoised"].dtype)))
    assert seen and set(seen) == {torch.bfloat16}  # the network ran under autocast ...
    assert x.dtype == torch.float32 and set(states) == {(torch.float32, torch.float32)}  # ... the sampler in float32
    assert (denoiser.sigma_min, denoiser.sigma_max) == (module.denoiser().sigma_min, module.denoiser().sigma_max)


@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_images_drawn_in_half_precision_are_close_to_float32s(precision):
    module = _edm2_module()
    exact, mixed = (generate(module, 8, "heun", 8, generator=torch.Generator().manual_seed(3), precision=p).images
                    for p in ("32", precision))
    assert mixed.dtype == torch.float32
    error = (mixed - exact).norm() / exact.norm()
    assert 0 < error <= 4 * UNIT_ROUNDOFF[precision]


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ValueError, match=r"precision must be one of 32, bf16, 16 .* got '8'"):
        generate(_edm2_module(), 2, "heun", 2, precision="8")
    with pytest.raises(ValueError, match="--precision must be one of"):
        pd.autocast_dtype("bf8", "--precision")
    assert pd.autocast_dtype("bf16-mixed") == torch.bfloat16 and pd.autocast_dtype("32-true") is None
