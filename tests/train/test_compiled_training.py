"""DiffusionModule(compile_training=…): the training loss through torch.compile equals the eager one."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pynodeta.models import DDPMUNet
from pynodeta.models.diffusion import EDM2UNet
from pynodeta.train import EDM2Objective, EDMObjective
from pynodeta.train.diffusion import DiffusionModule


def _tiny_unet(**options):
    torch.manual_seed(0)
    layout = {"channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (4,), **options}
    return DDPMUNet(image_size=8, channels=8, dropout=0.0, norm_groups=2, **layout)


def _loss_and_gradients(module: DiffusionModule, batch: torch.Tensor, seed: int):
    torch.manual_seed(seed)  # the same timesteps and noise for both modules
    module.zero_grad(set_to_none=True)
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.model.parameters()]


def _unet_for(objective, **layout):
    if isinstance(objective, EDM2Objective):
        torch.manual_seed(0)
        net = EDM2UNet(8, 1, model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=(8,),
                       channels_per_head=8)
        with torch.no_grad():  # at its initial 0 the output gain would leave every other gradient at 0
            net.out_gain.fill_(0.5)
        return net
    # EDM's c_noise = ln(σ)/4 spread over the DDPM timesteps the embedding is laid out for
    return _tiny_unet(time_scale=250.0, **layout) if isinstance(objective, EDMObjective) else _tiny_unet(**layout)


def _assert_same_training(options: dict | bool, objective=None, tolerance: float = 1e-6, **layout):
    eager = DiffusionModule(_unet_for(objective, **layout), objective, averaging="none")
    compiled = DiffusionModule(_unet_for(objective, **layout), copy.deepcopy(objective), averaging="none",
                               compile_training=options)
    for step, size in enumerate((6, 5)):  # a smaller last batch, as at the end of an epoch
        batch = torch.randn(size, 1, 8, 8, generator=torch.Generator().manual_seed(step))
        loss, grads = _loss_and_gradients(eager, batch, step)
        loss_c, grads_c = _loss_and_gradients(compiled, batch, step)
        torch.testing.assert_close(loss_c, loss, rtol=tolerance, atol=tolerance)
        for g_c, g in zip(grads_c, grads):
            torch.testing.assert_close(g_c, g, rtol=tolerance * 10, atol=tolerance * 10)
        # and what the forward writes into the weights (EDM2's forced weight normalisation)
        torch.testing.assert_close(compiled.model.state_dict(), eager.model.state_dict(), rtol=tolerance,
                                   atol=tolerance)
    return compiled


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize("objective", [None, EDMObjective(), EDM2Objective()], ids=["ddpm", "edm", "edm2"])
def test_compiled_training_step_equals_the_eager_one(objective):
    # aot_eager traces forward and backward as inductor does, without generating C++ (seconds, not a minute);
    # fullgraph: each network is one graph (a break, such as a branch on the data, would fail here); one level
    # keeps the tracing short, attention and every block type stay in
    compiled = _assert_same_training({"backend": "aot_eager", "fullgraph": True}, objective, channel_mult=(1,),
                                     attention_resolutions=(8,))
    # the compiled view is not part of the module: no second copy of the weights in a checkpoint
    eager = DiffusionModule(_unet_for(objective, channel_mult=(1,), attention_resolutions=(8,)), objective,
                            averaging="none")
    assert set(compiled.state_dict()) == set(eager.state_dict())
    clone = copy.deepcopy(compiled)
    assert clone.compiled_training is not compiled.compiled_training and clone.compiled_training.options == {
        "dynamic": True, "backend": "aot_eager", "fullgraph": True}


class _SmallEpsilonNetwork(nn.Module):
    """Two convolutions and a timestep offset: small enough that inductor compiles it in seconds."""

    def __init__(self):
        super().__init__()
        self.conv_in, self.conv_out = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, t, x):
        h = F.silu(self.conv_in(x) + (t.float() / 1000).reshape(-1, 1, 1, 1))
        return self.conv_out(h)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_default_compile_generates_code_that_matches_eager():
    # inductor's generated C++ for forward and backward, at two batch sizes through one dynamic graph
    modules = []
    for options in (False, True):
        torch.manual_seed(0)
        modules.append(DiffusionModule(_SmallEpsilonNetwork(), sample_shape=(1, 8, 8), averaging="none",
                                       compile_training=options))
    for step, size in enumerate((6, 5)):
        batch = torch.randn(size, 1, 8, 8, generator=torch.Generator().manual_seed(step))
        (loss, grads), (loss_c, grads_c) = (_loss_and_gradients(m, batch, step) for m in modules)
        torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads_c, grads, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_a_failed_compile_names_the_option():
    def failing_backend(graph, example_inputs):
        raise OSError("no C++ compiler")

    module = DiffusionModule(_tiny_unet(), averaging="none", compile_training={"backend": failing_backend})
    with pytest.raises(RuntimeError, match=r"compile_training=.*could not compile the network.*no C\+\+ compiler"
                                           r".*compile_training: false"):
        module.training_step(torch.randn(4, 1, 8, 8), 0)


@pytest.mark.parametrize("value, error, message", [
    ("yes", TypeError, "compile_training must be true, false or a dict"),
    ({"backnd": "inductor"}, ValueError, r"compile_training takes torch.compile's options .* got \['backnd'\]"),
])
def test_bad_compile_options_name_the_argument(value, error, message):
    with pytest.raises(error, match=message):
        DiffusionModule(_tiny_unet(), averaging="none", compile_training=value)


def test_eval_and_sampling_use_the_eager_network():
    module = DiffusionModule(_tiny_unet(), averaging="none", compile_training={"backend": "aot_eager"})
    module.eval()
    with torch.no_grad():
        module.denoiser()(torch.randn(3, 1, 8, 8), torch.tensor([0.1, 1.0, 10.0]))
        module.validation_step(torch.randn(3, 1, 8, 8), 0)
    assert module.compiled_training._view is None  # compiled at the first training step, for training only


def test_gain_gradient_through_a_normalised_weight_survives_a_dynamic_compile():
    # torch 2.13 lost torch.add's symbolic alpha in the compiled backward (eps + ‖W‖/√N), which made the
    # gain's gradient √fan_in times too small; normalize writes that sum as a product while compiling
    from pynodeta.nn.mp import MPConv

    gradients = []
    for compiled in (False, True):
        torch.manual_seed(0)
        conv = MPConv(4, 3, (3, 3)).train()
        gain = torch.nn.Parameter(torch.tensor(0.5))
        x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1))
        call = torch.compile(conv, backend="aot_eager", dynamic=True) if compiled else conv
        out = call(x, gain=gain)
        (out * torch.linspace(-1, 2, out.numel()).reshape(out.shape)).sum().backward()
        gradients.append((gain.grad.clone(), conv.weight.grad.clone()))
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-5, atol=1e-5)
