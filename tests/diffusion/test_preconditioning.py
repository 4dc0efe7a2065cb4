"""EDM preconditioning: the coefficients, the unit-variance design and the loss."""


import pytest
import torch
from torch import nn

from pynodeta.diffusion import EDMPrecond, edm_loss, edm_loss_weight


class _Recorder(nn.Module):
    """F = 0 (so D = c_skip·x), remembering what the network was handed."""

    def forward(self, c_noise, x_in):
        self.c_noise, self.x_in = c_noise, x_in
        return torch.zeros_like(x_in)


def test_coefficients_follow_edm_table_1():
    precond = EDMPrecond(_Recorder(), sigma_data=0.5)
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = precond.coefficients(sigma)
    torch.testing.assert_close(c_skip, 0.25 / (sigma**2 + 0.25))
    torch.testing.assert_close(c_out, sigma * 0.5 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(c_in * (sigma**2 + 0.25).sqrt(), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(c_noise, sigma.log() / 4)
    # the effective target of F, (x0 − c_skip x)/c_out, has unit variance for data of std σ_d (EDM Eq. 8)
    torch.testing.assert_close(c_skip**2 * sigma**2 + (1 - c_skip) ** 2 * 0.25, c_out**2)


def test_network_sees_unit_variance_and_ideal_loss_is_one():
    """For x0 ~ N(0, σ_d²), F = 0 is the ideal denoiser and its weighted loss is exactly 1 at every σ."""
    recorder = _Recorder()
    precond = EDMPrecond(recorder, sigma_data=0.5)
    g = torch.Generator().manual_seed(0)
    x0 = 0.5 * torch.randn(20000, 4, generator=g, dtype=torch.float64)
    sigma = torch.full((20000,), 3.0, dtype=torch.float64)
    precond(x0 + 3.0 * torch.randn(x0.shape, generator=g, dtype=torch.float64), sigma)
    assert float(recorder.x_in.std()) == pytest.approx(1.0, abs=0.01)
    torch.testing.assert_close(recorder.c_noise, sigma.log() / 4)
    loss = edm_loss(precond, x0, generator=g)
    assert float(loss.mean()) == pytest.approx(1.0, abs=0.03)
    assert loss.shape == (20000,)


def test_loss_draws_log_sigma_from_the_requested_normal():
    seen = []

    def denoiser(x, sigma):
        seen.append(sigma)
        return x

    edm_loss(denoiser, torch.zeros(20000, 2, dtype=torch.float64), p_mean=-0.4, p_std=1.0,
             generator=torch.Generator().manual_seed(1))
    log_sigma = seen[0].log()
    assert float(log_sigma.mean()) == pytest.approx(-0.4, abs=0.03)
    assert float(log_sigma.std()) == pytest.approx(1.0, abs=0.03)
    assert float(edm_loss_weight(torch.tensor(0.5), 0.5)) == pytest.approx(8.0)  # (0.25 + 0.25)/0.0625


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond(_Recorder(), sigma_data=0.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        EDMPrecond(_Recorder())(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="p_std"):
        edm_loss(lambda x, s: x, torch.zeros(2, 3), p_std=0.0)
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator or None, got int .*manual_seed"):
        edm_loss(lambda x, s: x, torch.zeros(2, 3), generator=0)  # a seed: torch's error spoke of .device


@pytest.mark.parametrize("shape", [(), (1,), (4,), (4, 1, 1, 1)])
def test_sigma_as_a_scalar_a_vector_or_nvlabs_column(shape):
    # NVlabs' EDMLoss passes σ of shape (batch, 1, 1, 1); samplers pass (batch,) or a scalar
    recorder = _Recorder()
    precond = EDMPrecond(recorder)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    sigma = torch.full(shape, 2.0, dtype=torch.float64)
    out = precond(x, sigma)
    torch.testing.assert_close(recorder.c_noise, torch.full((4,), torch.tensor(2.0).log().item() / 4,
                                                            dtype=torch.float64))
    torch.testing.assert_close(out, 0.25 / (4.0 + 0.25) * x)  # F = 0: D = c_skip·x


@pytest.mark.parametrize("shape", [(3,), (4, 3), (2, 2), (4, 1, 1, 1, 1), (1, 1)])
def test_other_sigma_shapes_are_refused_with_the_accepted_ones(shape):
    with pytest.raises(ValueError, match=r"sigma must be a scalar, \(4,\) or \(4, 1, \.\.\., 1\)"):
        EDMPrecond(_Recorder())(torch.zeros(4, 3, 2, 2), torch.ones(shape))


class _Conditional(nn.Module):
    def forward(self, c_noise, x_in, class_labels=None):
        self.class_labels = class_labels
        return torch.zeros_like(x_in)


def test_class_labels_reach_the_network_only_when_given():
    net = _Conditional()
    labels = torch.eye(3)
    EDMPrecond(net)(torch.zeros(3, 2), 1.0, class_labels=labels)
    assert net.class_labels is labels
    # an unconditional network with forward(t, x) keeps working without labels
    EDMPrecond(_Recorder())(torch.zeros(3, 2), 1.0)
    seen = {}

    def denoiser(x, sigma, **extra):
        seen.update(extra)
        return x

    edm_loss(denoiser, torch.zeros(3, 2), class_labels=labels)
    assert seen["class_labels"] is labels
    seen.clear()
    edm_loss(denoiser, torch.zeros(3, 2))
    assert seen == {}


def test_a_network_laid_out_for_ddpm_timesteps_is_refused_with_the_fix():
    from pynodeta.models import DDPMUNet

    options = dict(image_size=8, channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(),
                   norm_groups=1)
    # c_noise = ln(σ)/4 spans 2.65 over σ ∈ [0.002, 80]; DDPMUNet's sinusoid is laid out for [0, 1000)
    with pytest.raises(ValueError, match=r"time range \[0, 1000\).*0\.00265 times.*time_scale=250"):
        EDMPrecond(DDPMUNet(**options))
    net = DDPMUNet(**options, time_scale=250.0)
    assert net.time_range == (0.0, 4.0)
    EDMPrecond(net)(torch.randn(2, 1, 8, 8), torch.tensor([0.01, 10.0]))
    with pytest.raises(ValueError, match="wrap around"):
        EDMPrecond(DDPMUNet(**options, time_scale=1e5))
