"""DiffusionModule with EDM2Objective: the network appears once in the state, the loss is edm2_loss, the head
trains, and the defaults are EDM2's (Adam preset, power-function EMA, Heun with 32 levels)."""

import torch

from pynodeta.models.diffusion.edm2_unet import EDM2UNet
from pynodeta.train import DiffusionModule, EDM2Objective, EvalSettings, PowerEMAAveraging
from pynodeta.train.edm2_optim import EDM2Adam


def test_state_holds_the_network_once_and_the_loss_trains_the_uncertainty_head():
    torch.manual_seed(0)
    net = EDM2UNet(8, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=())
    module = DiffusionModule(net, EDM2Objective(logvar_channels=16),
                             evaluation=EvalSettings(num_samples=8, nll_num_images=0, num_bins=17))
    keys = module.state_dict().keys()
    assert any(k.startswith("model.") for k in keys) and any(k.startswith("objective.uncertainty.") for k in keys)
    assert not any("_precond" in k or k.startswith("objective.uncertainty.net") for k in keys)
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in module.trained_parameters())
    assert module.sample_shape == (1, 8, 8) and isinstance(module.optim, EDM2Adam)
    assert module.averaging == PowerEMAAveraging(0.10) and module.evaluation_average == "sigma_rel=0.1"
    assert (module.evaluation.sampler, module.evaluation.steps) == ("heun", 32)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    loss = module.objective.loss(module.model, x0, generator=torch.Generator().manual_seed(0)).mean()
    loss.backward()
    assert module.objective.uncertainty["linear"].weight.grad.abs().sum() > 0
    sigma = torch.full((4,), 2.0)
    torch.testing.assert_close(module.denoiser()(x0, sigma), 0.25 / 4.25 * x0)  # out_gain 0 at init
