"""external_denoiser: diffusers and k-diffusion models as pynodeta denoisers, checked against the hand formulas
and against diffusers' own DDIM loop on the same network and noise."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pynodeta.diffusion import SAMPLERS, ddpm_sigmas, external_denoiser, karras_sigmas, log_likelihood


def _unet(num_class_embeds=None):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2, num_class_embeds=num_class_embeds).eval()


def _scheduler(prediction_type):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoised_output_is_the_hand_formula_at_the_discrete_sigmas(prediction_type):
    model, scheduler = _unet(), _scheduler(prediction_type)
    denoiser = external_denoiser(model, scheduler=scheduler)
    timesteps = torch.tensor([0, 17, 500, 999])
    alphas_cumprod = scheduler.alphas_cumprod.double()[timesteps]
    sigma = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()
    x = torch.randn(4, 3, 8, 8) * (1 + sigma.reshape(-1, 1, 1, 1))
    with torch.no_grad():
        got = denoiser(x, sigma)
        a = alphas_cumprod.float().reshape(-1, 1, 1, 1)
        x_vp = x * a.sqrt()   # the VE state x is the VP state x_vp / √ᾱ
        out = model(x_vp, timesteps).sample
        if prediction_type == "epsilon":
            expected = x - sigma.reshape(-1, 1, 1, 1) * out
        else:
            expected = a.sqrt() * x_vp - (1 - a).sqrt() * out
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_through_the_adapter_matches_diffusers_ddim_loop(prediction_type):
    from diffusers import DDIMScheduler

    model, scheduler = _unet(), _scheduler(prediction_type)
    ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=False, set_alpha_to_one=True)
    ddim.set_timesteps(10)  # diffusers' default spacing, "leading"
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = noise
        for t in ddim.timesteps:
            x = ddim.step(model(x, t).sample, t, x).prev_sample
        denoiser = external_denoiser(model, scheduler=scheduler)
        sigmas = ddpm_sigmas(denoiser.schedule, 10, "leading")
        ours = SAMPLERS["ddim"](denoiser, noise * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas)
    assert [int(t) for t in ddim.timesteps] == [int(t) for t in denoiser.sigma_to_t(sigmas[:-1])]
    # float32 round-off, relative to the images (an untrained ε-network's x̂0 reaches |x| ~ 200)
    assert (ours - x).abs().max() / x.abs().max() < 2e-6, float((ours - x).abs().max())


def test_class_conditional_diffusers_model_gets_integer_classes():
    model, scheduler = _unet(num_class_embeds=3), _scheduler("epsilon")
    denoiser = external_denoiser(model, scheduler=scheduler)
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 1.0])
    with torch.no_grad():
        one_hot = denoiser(x, sigma, class_labels=torch.eye(3)[[2, 0]])
        swapped = denoiser(x, sigma, class_labels=torch.eye(3)[[0, 2]])
        indices = denoiser(x, sigma, class_labels=torch.tensor([2, 0]))
    assert torch.equal(one_hot, indices) and not torch.allclose(one_hot, swapped)
    with pytest.raises(ValueError, match="all-zero rows"):
        denoiser(x, sigma, class_labels=torch.zeros(2, 3))


def test_diffusers_model_needs_its_schedule():
    model = _unet()
    with pytest.raises(ValueError, match="scheduler="):
        external_denoiser(model)
    with pytest.raises(ValueError, match="prediction_type"):
        external_denoiser(model, betas=torch.linspace(1e-4, 0.02, 1000))
    with pytest.raises(ValueError, match="sigma_min"):
        external_denoiser(model, scheduler=_scheduler("epsilon"), sigma_min=0.1)


class GaussianKDenoiser(nn.Module):
    """The exact denoiser of data N(0, s²I), in k-diffusion's convention model(x, sigma, **kwargs)."""

    sigma_min, sigma_max = 0.002, 80.0

    def __init__(self, s: float):
        super().__init__()
        self.s = s

    def forward(self, x, sigma, cond=None):
        if cond is not None:
            x = x + 0 * cond.sum()  # the keyword arrives
        return self.s**2 / (self.s**2 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2) * x


def test_k_diffusion_denoiser_gives_the_exact_likelihood_and_samples():
    s = 0.7
    denoiser = external_denoiser(GaussianKDenoiser(s), label_keyword="cond")
    assert (denoiser.sigma_min, denoiser.sigma_max) == (0.002, 80.0)
    x = torch.randn(8, 2, 2, 2, generator=torch.Generator().manual_seed(0)) * s
    log_p = log_likelihood(denoiser, x, divergence="exact")
    variance = s**2 + 0.002**2
    expected = -0.5 * (x**2).flatten(1).sum(1) / variance - 4 * math.log(2 * math.pi * variance)
    assert (log_p - expected).abs().max() / 8 < 1e-3  # the prior N(0, σ_max²) misses s² of σ_max² + s²
    sigmas = karras_sigmas(32, denoiser.sigma_min, denoiser.sigma_max)
    drawn = SAMPLERS["heun"](denoiser, torch.randn(4000, 2, 2, 2, generator=torch.Generator().manual_seed(1)) * 80.0,
                             sigmas, extra_args={"class_labels": torch.ones(1)})
    assert abs(float(drawn.std()) - s) < 0.03
    with pytest.raises(ValueError, match="sigma_min= and sigma_max="):
        external_denoiser(nn.Identity())
    with pytest.raises(ValueError, match="diffusers models"):
        external_denoiser(GaussianKDenoiser(s), prediction_type="epsilon")
