"""Training under bf16 autocast (what Lightning's ``precision="bf16-mixed"`` runs on CPU) against float32.

Tolerances come from bf16's 8-bit significand: every matmul/convolution input is rounded to a relative
error of at most u = 2⁻⁸ ≈ 3.9e-3. A per-sample loss is a mean of 64 squared errors of such a network's
output, whose roundings partly average out (measured: at most 0.9u per sample): we allow 4u. An SGD update
is lr times the gradient, whose backward convolutions round too (measured: 2.4u in norm): we allow 8u.
Adam is not compared: its first steps move each weight by ±lr (g/|g|), so the weights whose gradient is
below bf16's rounding error move the other way, whatever the precision of the rest.
"""

import pytest
import torch

from pynodeta.ema import EMA, PowerFunctionEMA
from pynodeta.models import DDPMUNet
from pynodeta.models.diffusion.edm2_unet import EDM2UNet
from pynodeta.nn.mp import MPConv, normalize
from pynodeta.train import DDPMObjective, DiffusionModule, EDM2Objective, EDMObjective

U = 2.0**-8  # bf16's unit roundoff
BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def _module(objective: str) -> DiffusionModule:
    """A tiny network of each family, with attention and (DDPM U-Net) GroupNorm, whose output branch is live:
    the zero-initialised output gains and convolutions are set so the network, not c_skip, makes the loss."""
    torch.manual_seed(0)
    if objective == "edm2":
        net = EDM2UNet(8, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                       channels_per_head=16)
        module = DiffusionModule(net, EDM2Objective(logvar_channels=16), averaging="none")
        with torch.no_grad():
            for name, param in net.named_parameters():
                if name.endswith("gain"):
                    param.fill_(1.0)
            module.train()
            module.objective.loss(net, torch.zeros(2, 1, 8, 8))  # forced weight normalisation: unit rows from now on
        return module
    net = DDPMUNet(image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                   dropout=0.0, norm_groups=2, time_scale=250.0 if objective == "edm" else 1.0)
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, torch.nn.Conv2d) and not layer.weight.any():
                layer.weight.normal_(0, 0.1)
    return DiffusionModule(net, DDPMObjective() if objective == "ddpm" else EDMObjective(), averaging="none")


def _x0() -> torch.Tensor:
    return torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _loss(module: DiffusionModule, bf16: bool) -> torch.Tensor:
    with torch.autocast(**BF16, enabled=bf16):  # the same noise and σ/timesteps under both precisions
        return module.objective.loss(module.model, _x0(), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("objective", ["ddpm", "edm", "edm2"])
def test_the_loss_under_bf16_autocast_is_float32_and_agrees_with_float32(objective):
    module = _module(objective).train()
    exact, mixed = _loss(module, False), _loss(module, True)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, rtol=4 * U, atol=0)
    assert not torch.equal(mixed, exact)  # the network did run in bf16


@pytest.mark.parametrize("objective", ["ddpm", "edm", "edm2"])
def test_sgd_steps_under_bf16_autocast_move_the_weights_as_float32_steps_do(objective):
    updates = []
    for bf16 in (False, True):
        module = _module(objective).train()
        params = module.trained_parameters()
        start = [p.detach().clone() for p in params]
        optimizer = torch.optim.SGD(params, lr=1e-2)
        for _ in range(3):
            optimizer.zero_grad()
            _loss(module, bf16).mean().backward()
            optimizer.step()
        assert all(p.dtype == torch.float32 for p in params)  # the master weights stay float32
        updates.append(torch.cat([(p.detach() - s).flatten() for p, s in zip(params, start)]))
    exact, mixed = updates
    assert (mixed - exact).norm() <= 8 * U * exact.norm()
    assert exact.norm() > 0


def test_edm2_weight_normalisation_embedding_and_uncertainty_run_in_float32_under_autocast():
    torch.manual_seed(0)
    conv, twin = MPConv(8, 4, kernel=(3, 3)), MPConv(8, 4, kernel=(3, 3))
    twin.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, 4, 4)
    with torch.autocast(**BF16):
        y = conv(x)  # training mode: forced weight normalisation writes into the stored weight
        normalised = normalize(conv.weight)
    twin(x)
    assert y.dtype == torch.bfloat16  # the convolution itself ran in bf16 ...
    assert conv.weight.dtype == normalised.dtype == torch.float32  # ... its weight normalisation in float32:
    assert torch.equal(conv.weight, twin.weight)  # bit for bit what float32 computes
    assert torch.equal(normalised, normalize(twin.weight))

    module = _module("edm2").eval()
    precond, x, sigma = module.denoiser(), _x0(), torch.full((16,), 0.7)
    with torch.no_grad():
        emb, (_, logvar) = module.model.embedding(sigma.log() / 4, 16, None, x), precond(x, sigma, return_logvar=True)
        with torch.autocast(**BF16):
            emb_mixed, (denoised, logvar_mixed) = (module.model.embedding(sigma.log() / 4, 16, None, x),
                                                   precond(x, sigma, return_logvar=True))
    # NVlabs/edm2 computes the noise embedding and u(σ) from float32 c_noise outside its fp16 network
    assert emb_mixed.dtype == logvar_mixed.dtype == denoised.dtype == torch.float32
    assert torch.equal(emb_mixed, emb) and torch.equal(logvar_mixed, logvar)


class _HalfNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x)


def test_weight_averages_stay_float32_under_autocast_and_for_a_network_held_in_bf16():
    # Lightning's *-mixed keep float32 parameters; a network held in bf16 (e.g. "bf16-true") must not give
    # bf16 averages either: an EMA increment (1 − d)(θ − θ_ema) of 1e-3 of a weight is below bf16's spacing
    torch.manual_seed(0)
    net = _HalfNet().to(torch.bfloat16)
    start = net.linear.weight.detach().float().clone()
    ema, power = EMA(net, decay=0.999, warmup=False), PowerFunctionEMA(net, sigma_rels=(0.05,))
    with torch.no_grad():
        net.linear.weight.add_(1.0)
    ema.update(1)
    power.update(1)
    power.update(2)
    average = ema.averaged("ema")
    assert all(s.dtype == torch.float32 for s in ema.shadow_params)
    assert all(p.dtype == torch.float32 for p in average.parameters())
    moved = start + 0.001 * (net.linear.weight.float() - start)  # by (1 − d)(θ − θ_ema), about 1e-3
    torch.testing.assert_close(ema.shadow_params[0], moved, rtol=0, atol=1e-6)
    assert all(v.dtype == torch.float32 for a in power.state_dict()["averages"] for v in a.values())

    # a float32 network trained under bf16 autocast: the averages are float32 and fold in the float32 weights
    module = _module("edm").train()
    ema, power = EMA(module.model, decay=0.9, warmup=False), PowerFunctionEMA(module.model, sigma_rels=(0.10,))
    optimizer = torch.optim.SGD(module.trained_parameters(), lr=1e-2)
    for step in (1, 2):
        optimizer.zero_grad()
        _loss(module, True).mean().backward()
        optimizer.step()
        with torch.autocast(**BF16):
            ema.update(step)
            power.update(step)
    averaged = power.averaged(0.10)
    assert all(p.dtype == torch.float32 for p in (*ema.shadow_params, *averaged.parameters()))
    assert all(p.dtype == torch.float32 for p in ema.averaged().parameters())
