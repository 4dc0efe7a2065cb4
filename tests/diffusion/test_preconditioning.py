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
