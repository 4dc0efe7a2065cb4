"""EDM2 preconditioning, learned-uncertainty loss and learning-rate schedule against their formulas."""

import math

import pytest
import torch

from pynodeta.diffusion.edm2 import EDM2Precond, edm2_learning_rate, edm2_loss
from pynodeta.diffusion.preconditioning import edm_loss_weight
from pynodeta.models.diffusion.edm2_unet import EDM2UNet


class _Affine(torch.nn.Module):
    """F(c_noise, x) = a·x + c_noise: simple enough to check D by hand."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, c_noise, x, class_labels=None):
        return self.a * x + c_noise.reshape(-1, 1, 1, 1)


def test_denoiser_matches_edm_coefficients():
    precond = EDM2Precond(_Affine(), sigma_data=0.5)
    x, sigma = torch.randn(3, 1, 2, 2), torch.tensor([0.01, 0.5, 40.0])
    s = sigma.reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in = 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25).sqrt(), 1 / (s**2 + 0.25).sqrt()
    expected = c_skip * x + c_out * (0.7 * c_in * x + torch.log(s) / 4)
    torch.testing.assert_close(precond(x, sigma), expected)
    denoised, logvar = precond(x, sigma, return_logvar=True)
    assert logvar.shape == (3,)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        precond(x, torch.tensor([0.1, 0.0, 1.0]))


class _TwoArguments(torch.nn.Module):
    """An unconditional F(c_noise, x): it must never be handed a third argument."""

    def forward(self, c_noise, x):
        return torch.zeros_like(x)


def test_class_labels_and_nvlabs_sigma_column_reach_the_network():
    unet = EDM2UNet(8, 1, label_dim=3, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=())
    with torch.no_grad():
        unet.out_gain.fill_(1.0)
        for name, p in unet.named_parameters():
            if name.endswith("emb_gain"):
                p.fill_(1.0)
    precond = EDM2Precond(unet, logvar_channels=16).eval()
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.3, 0.3, 0.3])
    labels = torch.eye(3)
    by_vector = precond(x, sigma, class_labels=labels)
    torch.testing.assert_close(precond(x, sigma.reshape(3, 1, 1, 1), class_labels=labels), by_vector)
    torch.testing.assert_close(precond(x, 0.3, class_labels=labels), by_vector)
    assert not torch.allclose(by_vector, precond(x, sigma))  # labels change D; None is all-zero labels
    torch.testing.assert_close(precond(x, sigma), precond(x, sigma, class_labels=torch.zeros(3, 3)))
    loss = edm2_loss(precond, x, class_labels=labels, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (3,)
    plain = EDM2Precond(_TwoArguments(), logvar_channels=16)
    torch.testing.assert_close(plain(x, sigma), 0.25 / (0.09 + 0.25) * x)
    assert edm2_loss(plain, x).shape == (3,)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        edm2_loss(plain, x, generator=7)


def test_edm2_unet_at_init_returns_c_skip_x():
    torch.manual_seed(0)
    unet = EDM2UNet(8, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=())
    precond = EDM2Precond(unet, logvar_channels=32)
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.2, 3.0])
    torch.testing.assert_close(precond(x, sigma), 0.25 / (sigma**2 + 0.25).reshape(-1, 1, 1, 1) * x)


def test_loss_is_the_uncertainty_weighted_formula():
    # eval mode: in training mode the second call would renormalise MPConv weights the first graph saved
    precond = EDM2Precond(_Affine(), logvar_channels=16).eval()
    x0 = torch.randn(4, 1, 3, 3)
    loss = edm2_loss(precond, x0, generator=torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)  # replay the same σ and noise
    sigma = (-0.4 + 1.0 * torch.randn(4, generator=generator)).exp()
    noisy = x0 + sigma.reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=generator)
    denoised, u = precond(noisy, sigma, return_logvar=True)
    error = (denoised - x0).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, edm_loss_weight(sigma) / u.exp() * error + u)
    loss.mean().backward()
    assert precond.logvar_linear.weight.grad.abs().sum() > 0 and precond.net.a.grad is not None


def test_optimal_uncertainty_is_the_log_of_the_weighted_error():
    # d/du [e·exp(−u) + u] = 0 at u = ln e: the loss at the optimum is 1 + ln e.
    e = torch.tensor(0.37)
    u = torch.tensor(math.log(0.37), requires_grad=True)
    (e / u.exp() + u).backward()
    assert abs(u.grad.item()) < 1e-6


def test_learning_rate_schedule():
    assert edm2_learning_rate(50, ref_lr=0.01, ref_steps=100, warmup_steps=0) == pytest.approx(0.01)
    assert edm2_learning_rate(400, ref_lr=0.01, ref_steps=100) == pytest.approx(0.005)  # 1/√(400/100)
    assert edm2_learning_rate(25, ref_lr=0.01, ref_steps=100, warmup_steps=100) == pytest.approx(0.0025)
    assert edm2_learning_rate(10**6, ref_lr=0.01, ref_steps=0) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="ref_lr > 0"):
        edm2_learning_rate(1, ref_lr=0.0)


def test_optimizer_preset_follows_the_schedule():
    from pynodeta.train.edm2_optim import EDM2Adam

    module = torch.nn.Linear(2, 2)
    built = EDM2Adam(ref_lr=0.02, ref_steps=4, warmup_steps=2).build(module)
    optimizer, schedule = built["optimizer"], built["lr_scheduler"]["scheduler"]
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    rates = []
    for _ in range(16):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [edm2_learning_rate(step, 0.02, 4, 2) for step in range(1, 17)]
    assert rates == pytest.approx(expected)
    with pytest.raises(ValueError, match="ref_steps and warmup_steps"):
        EDM2Adam(ref_steps=-1)
