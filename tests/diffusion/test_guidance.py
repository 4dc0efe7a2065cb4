"""Classifier-free guidance: D = D_u + w·(D_c − D_u), exact on a denoiser whose two predictions are known."""

import pytest
import torch
from torch import nn

from pynodeta.diffusion.guidance import GuidedDenoiser


class ClassMeanDenoiser(nn.Module):
    """The exact denoiser of N(μ_c, s²) data per class c, and of N(0, s² + 1) (the class mixture's moment match)
    when the labels are zero: D(x, σ) = (s² x + σ² μ)/(s² + σ²)."""

    sigma_min, sigma_max = 0.002, 80.0

    def __init__(self, means, s=0.5):
        super().__init__()
        self.means, self.s = torch.as_tensor(means, dtype=torch.float64), s
        self.calls = []

    def forward(self, x, sigma, class_labels=None):
        self.calls.append(x.shape[0])
        mu = (class_labels.to(x.dtype) @ self.means.to(x.dtype)).reshape(-1, *([1] * (x.ndim - 1)))
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (self.s**2 * x + sigma**2 * mu) / (self.s**2 + sigma**2)


def _inputs(batch=6):
    x = torch.randn(batch, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.nn.functional.one_hot(torch.arange(batch) % 3, 3).double()
    return x, torch.full((batch,), 1.5, dtype=torch.float64), labels


@pytest.mark.parametrize("w", [0.0, 1.0, 1.5, 3.0])
def test_guidance_is_the_lerp_of_the_unconditional_and_conditional_predictions(w):
    den = ClassMeanDenoiser([-1.0, 0.5, 2.0])
    x, sigma, labels = _inputs()
    conditional, unconditional = den(x, sigma, labels), den(x, sigma, torch.zeros_like(labels))
    expected = unconditional + w * (conditional - unconditional)
    den.calls.clear()
    torch.testing.assert_close(GuidedDenoiser(den, w)(x, sigma, class_labels=labels), expected)
    assert den.calls == ([6] if w == 1 else [12])  # one call; guided: both predictions in one doubled batch


def test_a_separate_unconditional_denoiser_is_used_when_given():
    den, reference = ClassMeanDenoiser([-1.0, 0.5, 2.0]), ClassMeanDenoiser([0.0, 0.0, 0.0], s=2.0)
    x, sigma, labels = _inputs()
    expected = torch.lerp(reference(x, sigma, torch.zeros_like(labels)), den(x, sigma, labels), 2.0)
    guided = GuidedDenoiser(den, 2.0, unconditional=lambda x_, s_: reference(x_, s_, torch.zeros_like(labels)))
    torch.testing.assert_close(guided(x, sigma, class_labels=labels), expected)


def test_guidance_needs_labels_and_a_valid_weight():
    den = ClassMeanDenoiser([0.0, 1.0, 2.0])
    x, sigma, _ = _inputs()
    with pytest.raises(ValueError, match="needs class_labels"):
        GuidedDenoiser(den, 2.0)(x, sigma)
    for bad in (-0.5, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
            GuidedDenoiser(den, bad)
    assert (GuidedDenoiser(den, 2.0).sigma_min, GuidedDenoiser(den, 2.0).sigma_max) == (0.002, 80.0)


def test_integer_classes_are_refused_where_the_unconditional_half_is_the_labels_zeroed():
    # zeroed integer classes are class 0, not "no class": guidance would push away from class 0
    den = ClassMeanDenoiser([0.0, 1.0, 2.0])
    x, sigma, labels = _inputs()
    classes = labels.argmax(dim=1)
    for bad in (classes, labels.long(), labels[:3]):
        with pytest.raises(ValueError, match=r"one-hot class_labels of shape \(batch=6, num_classes\).*one_hot"):
            GuidedDenoiser(den, 2.0)(x, sigma, class_labels=bad)
    # with its own unconditional denoiser, or without guidance, the labels are the network's business
    plain = ClassMeanDenoiser([0.0, 1.0, 2.0])
    mean_of = lambda c: plain(x, sigma, torch.nn.functional.one_hot(c, 3).double())  # noqa: E731
    integer_den = lambda x_, s_, class_labels: mean_of(class_labels)  # noqa: E731
    torch.testing.assert_close(GuidedDenoiser(integer_den, 1.0)(x, sigma, class_labels=classes), mean_of(classes))
