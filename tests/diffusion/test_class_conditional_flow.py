"""Class labels reach every denoiser call of the probability-flow ODE and of the likelihood's divergence."""

import math

import pytest
import torch

from pynodeta.diffusion import log_likelihood, probability_flow


class ClassGaussians:
    """Class c holds data x0 ~ N(m_c, s_c² I): both the mean and the spread depend on the label, so the
    drift and its divergence (dimension · σ/(s_c² + σ²)) are wrong if a label goes missing."""

    def __init__(self):
        self.means = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.5], [0.0, 4.0, -2.0]], dtype=torch.float64)
        self.stds = torch.tensor([0.3, 0.8, 1.5], dtype=torch.float64)
        self.dim = self.means.shape[1]

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None):
        """E[x0 | x, c] = m_c + s_c²/(s_c² + σ²)(x − m_c)."""
        if class_labels is None:
            raise ValueError("this denoiser needs class_labels")
        mean, var = class_labels @ self.means, (class_labels @ self.stds**2)[:, None]
        return mean + var / (var + sigma[:, None] ** 2) * (x - mean)

    def noisy(self, classes: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(len(classes), self.dim, generator=generator, dtype=torch.float64)
        return self.means[classes] + (self.stds[classes, None] ** 2 + sigma**2).sqrt() * z

    def flow(self, x: torch.Tensor, classes: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """The exact map of each class: x − m_c scales by √((s_c² + σ_to²)/(s_c² + σ_from²))."""
        var = self.stds[classes, None] ** 2
        mean = self.means[classes]
        return mean + ((var + sigma_to**2) / (var + sigma_from**2)).sqrt() * (x - mean)

    def log_density(self, x: torch.Tensor, classes: torch.Tensor, sigma: float) -> torch.Tensor:
        var = self.stds[classes] ** 2 + sigma**2
        return -0.5 * (((x - self.means[classes]) ** 2).sum(dim=1) / var + self.dim * torch.log(2 * math.pi * var))


def _one_hot(classes: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(classes, 3).to(torch.float64)


CLASSES = torch.tensor([0, 1, 2, 2, 1, 0, 1, 2])


def test_flow_from_noise_reaches_each_class_exactly():
    data = ClassGaussians()
    x = data.noisy(CLASSES, 80.0, torch.Generator().manual_seed(0))
    solution = probability_flow(data.denoiser, x, 80.0, 0.002, class_labels=_one_hot(CLASSES), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(solution.ys[-1], data.flow(x, CLASSES, 80.0, 0.002), atol=1e-5, rtol=1e-5)
    # the same noise under another class's labels ends elsewhere: the labels steer the flow
    relabelled = (CLASSES + 1) % 3
    other = probability_flow(data.denoiser, x, 80.0, 0.002, class_labels=_one_hot(relabelled), rtol=1e-8, atol=1e-8)
    assert (other.ys[-1] - solution.ys[-1]).abs().amax(dim=1).min() > 0.5


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_likelihood_of_each_class_is_its_gaussian_density(divergence):
    """log N(x_T; 0, σ_max²I) + log p_σmin(x | c) − log p_σmax(x_T | c) along class c's exact flow. The
    Jacobian of the drift is a multiple of I, so the Hutchinson estimate is exact too (ε_i² = 1)."""
    data, sigma_min, sigma_max = ClassGaussians(), 0.002, 80.0
    x = data.noisy(CLASSES, 0.0, torch.Generator().manual_seed(1))
    log_p = log_likelihood(data.denoiser, x, class_labels=_one_hot(CLASSES), divergence=divergence,
                           generator=torch.Generator().manual_seed(2))
    x_end = data.flow(x, CLASSES, sigma_min, sigma_max)
    prior = -0.5 * (x_end**2).sum(dim=1) / sigma_max**2 - 0.5 * data.dim * math.log(2 * math.pi * sigma_max**2)
    expected = prior + data.log_density(x, CLASSES, sigma_min) - data.log_density(x_end, CLASSES, sigma_max)
    assert (log_p - expected).abs().max() / data.dim < 1e-4
    # and far from the density of the wrong class
    wrong = (CLASSES + 1) % 3
    assert (log_p - data.log_density(x, wrong, sigma_min)).abs().min() > 1.0


def test_unconditional_calls_pass_no_labels():
    """Without class_labels the denoiser is called with (x, sigma) only: a two-argument callable works."""
    calls = []

    def two_arguments(x, sigma):
        calls.append(sigma)
        return torch.zeros_like(x)

    probability_flow(two_arguments, torch.ones(2, 3, dtype=torch.float64), 1.0, 0.5, method="euler",
                     options={"step_size": 0.25})
    assert len(calls) == 2


@pytest.mark.parametrize("labels, error, match", [
    (torch.zeros(5, 3), ValueError, "one row per sample"),
    (torch.zeros(4), TypeError, r"shape \(batch, num_classes\)"),
    (torch.zeros(4, 3, dtype=torch.long), TypeError, "float one-hot"),
    ([[1.0, 0.0]] * 4, TypeError, "list"),
])
def test_bad_class_labels_are_refused(labels, error, match):
    data = ClassGaussians()
    x = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(error, match=match):
        probability_flow(data.denoiser, x, 80.0, 0.002, class_labels=labels)
    with pytest.raises(error, match=match):
        log_likelihood(data.denoiser, x, class_labels=labels)
