"""EDM2DiffusionModule: the network appears once in the state, the loss is edm2_loss, the head trains."""

import torch

from pynodeta.models.diffusion.edm2_unet import EDM2UNet
from pynodeta.train.edm2_module import EDM2DiffusionModule
from pynodeta.train.edm2_optim import EDM2Adam


def test_state_holds_the_network_once_and_the_loss_trains_the_uncertainty_head():
    torch.manual_seed(0)
    net = EDM2UNet(8, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=())
    module = EDM2DiffusionModule(net, logvar_channels=16, eval_num_samples=8, nll_num_images=0, num_bins=17)
    keys = module.state_dict().keys()
    assert any(k.startswith("model.") for k in keys) and any(k.startswith("uncertainty.") for k in keys)
    assert not any(k.startswith("_precond") for k in keys)
    assert module.sample_shape == (1, 8, 8) and isinstance(module.optim, EDM2Adam)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    loss = module._loss(x0, torch.Generator().manual_seed(0))
    loss.backward()
    assert module.uncertainty["linear"].weight.grad.abs().sum() > 0
    sigma = torch.full((4,), 2.0)
    torch.testing.assert_close(module.denoiser()(x0, sigma), 0.25 / 4.25 * x0)  # out_gain 0 at init
