"""DiffusionModule: the three DDPM parametrisations against closed forms, its options, and bad input."""

import math

import pytest
import torch
from torch import nn

from pynodeta.diffusion import DDPMSchedule
from pynodeta.models import DDPMUNet
from pynodeta.train import DDPMObjective, EDMObjective, EMAAveraging, EvalSettings
from pynodeta.train.diffusion import DiffusionModule
from pynodeta.train.diffusion_objectives import EpsilonView, prediction_target

MEAN, STD = 0.3, 0.7  # Gaussian data N(MEAN, STD²) per pixel


class ExactGaussianNetwork(nn.Module):
    """The exact ε-, x0- or v-prediction for Gaussian data at integer timesteps (REFERENCES §9)."""

    def __init__(self, schedule: DDPMSchedule, prediction: str):
        super().__init__()
        self.schedule, self.prediction = schedule, prediction

    def forward(self, t, x):
        alpha_bar = self.schedule.alphas_cumprod[t.round().long()].to(x.dtype).reshape(-1, 1, 1, 1)
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        eps = s * (x - a * MEAN) / (alpha_bar * STD**2 + 1 - alpha_bar)
        x0 = (x - s * eps) / a
        return {"epsilon": eps, "sample": x0, "v": a * eps - s * x0}[self.prediction]


def _tiny_unet(**options):
    return DDPMUNet(image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                    dropout=0.0, norm_groups=2, **options)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v"])
def test_each_parametrisation_gives_the_exact_gaussian_denoiser(prediction):
    schedule = DDPMSchedule(1000)
    module = DiffusionModule(ExactGaussianNetwork(schedule, prediction), DDPMObjective(schedule, prediction),
                             sample_shape=(1, 8, 8), averaging="none")
    sigma = schedule.sigmas[torch.tensor([10, 500, 900])].float()  # integer timesteps: no interpolation error
    x = MEAN + torch.randn(3, 1, 8, 8) * (STD**2 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt()
    expected = MEAN + STD**2 / (STD**2 + sigma.reshape(-1, 1, 1, 1) ** 2) * (x - MEAN)
    torch.testing.assert_close(module.denoiser()(x, sigma), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction", ["sample", "v"])
def test_targets_convert_back_to_the_noise(prediction):
    schedule = DDPMSchedule(100, "cosine")
    x0, noise, t = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 50, 98, 99])
    target = prediction_target(prediction, schedule, x0, noise, t)
    view = EpsilonView(lambda t_, x_: target, schedule, prediction)
    x_t = schedule.add_noise(x0, noise, t)
    torch.testing.assert_close(view(t, x_t), noise, rtol=1e-4, atol=1e-4)
    # a fractional timestep with zero fraction is the integer one
    torch.testing.assert_close(view(t.double(), x_t), view(t, x_t))


def test_loss_weighting_and_timestep_sampler_are_options():
    objective = DDPMObjective(loss_weighting="min-snr", loss_weighting_options={"gamma": 5.0},
                              timestep_sampler="importance")
    DiffusionModule(_tiny_unet(), objective, averaging="none")
    t = torch.tensor([0, 100, 999])
    snr = objective.schedule.snr(t)
    torch.testing.assert_close(objective.loss_weighting(snr).float(), (snr.clamp(max=5.0) / snr).float())
    drawn, weights = objective.timestep_sampler.sample(16, torch.device("cpu"), torch.Generator().manual_seed(0),
                                                       x0=torch.zeros(16, 1, 8, 8))
    assert drawn.shape == weights.shape == (16,) and int(drawn.max()) < 1000


def test_ddpm_loss_is_the_mean_squared_noise_error():
    module = DiffusionModule(_tiny_unet(), averaging="none")  # the fresh U-Net predicts exactly 0
    x0 = torch.randn(256, 1, 8, 8) * 0.5
    loss = module.objective.loss(module.model, x0, generator=torch.Generator().manual_seed(0)).mean()
    assert math.isclose(float(loss.detach()), 1.0, rel_tol=0.03)  # E‖ε − 0‖²/dim = 1


def test_ema_follows_the_weights():
    module = DiffusionModule(_tiny_unet(), averaging=EMAAveraging(0.5))
    with torch.no_grad():
        module.model.conv_in.weight.add_(1.0)
    module.ema.warmup = False
    module.optimizer_step(0, 0, torch.optim.SGD(module.model.parameters(), lr=0.0))  # the EMA updates after a step
    raw = module.model.conv_in.weight.detach().clone()
    with module.ema_weights():
        averaged = module.model.conv_in.weight.detach().clone()
    torch.testing.assert_close(averaged, raw - 0.5)  # halfway between the initial and the current weights
    torch.testing.assert_close(module.model.conv_in.weight, raw)


@pytest.mark.parametrize("build, error, message", [
    (lambda: DiffusionModule(_tiny_unet(), objective="score"), TypeError, "objective must be a DiffusionObjective"),
    (lambda: DDPMObjective(prediction="noise"), ValueError, "prediction"),
    (lambda: DiffusionModule(_tiny_unet(), EDMObjective(), evaluation=EvalSettings(sampler="ddim")), ValueError,
     "ddim"),
    (lambda: DiffusionModule(_tiny_unet(), evaluation=EvalSettings(sampler="rk4")), ValueError, "sampler"),
    (lambda: EMAAveraging(1.0), ValueError, "decay"),
    (lambda: DiffusionModule(_tiny_unet(), averaging=0.999), TypeError, "averaging"),
    (lambda: DiffusionModule(_tiny_unet(), DDPMObjective(timestep_sampler="sometimes")), ValueError,
     "timestep_sampler|sometimes"),
    (lambda: DDPMObjective(loss_weighting="snr"), ValueError, "snr"),
    (lambda: EDMObjective(p_std=0.0), ValueError, "p_std"),
    (lambda: EvalSettings(guidance=-1.0), ValueError, "guidance"),
    (lambda: EvalSettings(num_samples=1), ValueError, "num_samples"),
    (lambda: DiffusionModule(_tiny_unet(), label_dropout=0.1), ValueError, "class-conditional"),
])
def test_bad_options_name_the_argument(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_wrong_batch_shape_is_refused():
    module = DiffusionModule(_tiny_unet(), averaging="none")
    with pytest.raises(ValueError, match=r"batches must hold images \(batch, 1, 8, 8\)"):
        module.training_step((torch.zeros(2, 3, 8, 8), torch.zeros(2)), 0)


def test_ode_sampler_reproduces_gaussian_data():
    """The probability-flow sampler of a DDPM model with the exact ε-predictor draws N(MEAN, STD²) pixels."""
    from pynodeta.train.diffusion_sampling import generate

    schedule = DDPMSchedule(1000)
    module = DiffusionModule(ExactGaussianNetwork(schedule, "epsilon"), DDPMObjective(schedule), sample_shape=(1, 8, 8),
                             averaging="none")
    samples = generate(module, 256, "ode", generator=torch.Generator().manual_seed(0))
    assert abs(float(samples.images.mean()) - MEAN) < 0.02
    assert abs(float(samples.images.std()) - STD) < 0.02
    assert samples.nfe > 0
