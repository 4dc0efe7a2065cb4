"""Class labels end to end: batches to the objective's loss (with label dropout), sampling with requested classes
and guidance, and the errors for labels where there are no classes."""

import pytest
import torch
from torch import nn

from pynodeta.train import (
    DDPMObjective,
    DiffusionModule,
    DiffusionObjective,
    EDM2Objective,
    EDMObjective,
    EvalSettings,
)
from pynodeta.train.conditioning import ClassConditioning, one_hot_labels
from pynodeta.train.diffusion_sampling import generate, requested_labels

NUM_CLASSES = 3
CLASS_MEANS = torch.tensor([-0.6, 0.0, 0.6])


class ClassMeanNetwork(nn.Module):
    """Predicts a class-dependent constant (and records the labels it was given): enough to see labels arrive."""

    in_channels, image_size, num_classes = 1, 4, NUM_CLASSES

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor | None] = []

    def forward(self, t, x, class_labels=None):
        self.seen.append(None if class_labels is None else class_labels.detach().clone())
        mean = 0 if class_labels is None else (class_labels @ CLASS_MEANS.to(x)).reshape(-1, 1, 1, 1)
        return self.scale * (mean + 0 * x)


def _batch(n=8):
    return torch.rand(n, 1, 4, 4) * 2 - 1, torch.arange(n) % NUM_CLASSES


@pytest.mark.parametrize("objective", [DDPMObjective, EDMObjective])
def test_labels_reach_the_network_one_hot_in_training_and_validation(objective):
    net = ClassMeanNetwork()
    module = DiffusionModule(net, objective(), averaging="none", evaluation=EvalSettings(steps=2))
    x, labels = _batch()
    module.training_step((x, labels), 0)
    torch.testing.assert_close(net.seen[-1], torch.nn.functional.one_hot(labels, NUM_CLASSES).float())
    module.validation_step((x, labels), 0)
    torch.testing.assert_close(net.seen[-1], torch.nn.functional.one_hot(labels, NUM_CLASSES).float())


def test_label_dropout_zeroes_about_its_fraction_of_the_rows_in_training_only():
    conditioning = ClassConditioning.of(ClassMeanNetwork(), 0.25)
    torch.manual_seed(0)
    labels = one_hot_labels(torch.arange(20000) % NUM_CLASSES, NUM_CLASSES, torch.empty(()))
    dropped = conditioning.drop(labels)
    zero_rows = float((dropped.sum(dim=1) == 0).double().mean())
    assert abs(zero_rows - 0.25) < 4 * (0.25 * 0.75 / 20000) ** 0.5
    kept = dropped.sum(dim=1) == 1
    torch.testing.assert_close(dropped[kept], labels[kept])  # the other rows are untouched
    assert ClassConditioning.of(ClassMeanNetwork(), 0.0).drop(labels) is labels


def test_an_edm2_unet_with_classes_trains_conditionally_and_unconditionally():
    from pynodeta.models.diffusion.edm2_unet import EDM2UNet

    torch.manual_seed(0)
    net = EDM2UNet(4, 1, label_dim=NUM_CLASSES, model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=())
    with torch.no_grad():  # EDM2's gains start at 0, which would leave the class embedding without a gradient
        for name, parameter in net.named_parameters():
            if name.endswith("gain"):
                parameter.fill_(1.0)
    module = DiffusionModule(net, EDM2Objective(logvar_channels=8), averaging="none", label_dropout=0.5)
    assert module.num_classes == NUM_CLASSES
    loss = module.training_step(_batch(), 0)
    loss.backward()
    assert net.emb_label.weight.grad.abs().sum() > 0  # the class embedding learns


def test_requested_labels():
    assert requested_labels(None, 5, None) is None
    assert requested_labels("all", 7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert requested_labels(2, 3, 3).tolist() == [2, 2, 2]
    assert requested_labels([0, 2], 2, 3).tolist() == [0, 2]
    with pytest.raises(ValueError, match="class-conditional"):
        requested_labels(None, 5, 3)
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        requested_labels(1, 5, None)
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        requested_labels(3, 5, 3)
    with pytest.raises(ValueError, match="one integer class per image"):
        requested_labels([0, 1], 5, 3)


class PointMasses(DiffusionObjective):
    """Data that is the point μ_c for class c: the exact denoiser is the network's class mean itself."""

    default_sampler, default_steps = "euler", 4

    def denoiser(self, model):
        return _NetworkAsDenoiser(model)

    def loss(self, model, x0, class_labels=None, *, generator=None, step=None):
        return (model(None, x0, class_labels) - x0).pow(2).flatten(1).mean(1)


class _NetworkAsDenoiser(nn.Module):
    sigma_min, sigma_max = 0.002, 80.0

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, sigma, class_labels=None):
        return self.model(sigma, x, class_labels)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_sampling_draws_the_requested_classes_with_guidance(sampler, guidance):
    """Every step's x̂0 is D_u + w·(D_c − D_u) = w·μ_c (zero labels predict 0), and the last step to σ = 0 returns it."""
    module = DiffusionModule(ClassMeanNetwork(), PointMasses(), averaging="none")
    samples = generate(module, 6, sampler, 4, class_labels="all", guidance=guidance,
                       generator=torch.Generator().manual_seed(0))
    assert samples.labels.tolist() == [0, 1, 2, 0, 1, 2]
    expected = (guidance * CLASS_MEANS[samples.labels]).reshape(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    torch.testing.assert_close(samples.images, expected)


def test_conditioning_errors_name_the_fix():
    with pytest.raises(ValueError, match="batches hold no labels"):
        DiffusionModule(ClassMeanNetwork(), averaging="none").training_step(torch.zeros(2, 1, 4, 4), 0)
    unconditional = nn.Conv2d(1, 1, 1)
    unconditional.in_channels, unconditional.image_size = 1, 4
    module = DiffusionModule(unconditional, EDMObjective(), averaging="none")
    with pytest.raises(ValueError, match="guidance=2.0 needs a class-conditional model"):
        generate(module, 2, "euler", 2, guidance=2.0)
