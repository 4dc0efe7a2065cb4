"""The likelihood figures of the end-of-fit summary and ``pynodeta evaluate``: NLL over the denoiser's own
noise range and the DDPM variational bound."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from pynodeta.diffusion import DDPMSchedule, variational_bound
from pynodeta.models import DDPMUNet
from pynodeta.train import DDPMObjective, EDMObjective, EvalSettings
from pynodeta.train.diffusion import DiffusionModule
from pynodeta.train.diffusion_evaluation import nll_bits_per_dim, summary_line, vlb_bits_per_dim

NUM_BINS = 17


class _Pixels:
    """A test set as the image DataModules hold it: raw integers in ``images``, [-1, 1] through indexing."""

    def __init__(self, n: int, seed: int):
        self.images = torch.randint(0, NUM_BINS, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
        self.labels = torch.zeros(n, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].float() * 2 / (NUM_BINS - 1) - 1, 0


def _data():
    return SimpleNamespace(train_set=_Pixels(8, 0), test_set=_Pixels(6, 1))


def _module(objective: str = "ddpm", num_timesteps: int = 100) -> DiffusionModule:
    unet = DDPMUNet(image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                    dropout=0.0, norm_groups=2, time_scale=250.0 if objective == "edm" else 1.0)
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)  # a fresh U-Net predicts exactly 0: make it vary
    chosen = DDPMObjective(DDPMSchedule(num_timesteps)) if objective == "ddpm" else EDMObjective()
    return DiffusionModule(unet, chosen, evaluation=EvalSettings(nll_num_images=4, num_bins=NUM_BINS),
                           averaging="none")


def test_the_bound_of_the_first_test_images_exact_and_estimated():
    module, data = _module(), _data()
    exact = vlb_bits_per_dim(module, data)
    x0 = torch.stack([data.test_set[i][0] for i in range(4)])
    expected = variational_bound(module.objective.eps_model(module.model), x0, module.objective.schedule,
                                 num_bins=NUM_BINS,
                                 generator=torch.Generator().manual_seed(2024))
    assert exact["vlb_bpd"] == pytest.approx(math.fsum(expected.tolist()) / 4, rel=1e-12) and exact["vlb_bpd"] > 0
    assert exact["vlb_stderr"] == pytest.approx(float(expected.std() / 2), rel=1e-12)
    assert (exact["vlb_sampled_timesteps"], exact["vlb_num_timesteps"]) == (None, 100)
    estimate = vlb_bits_per_dim(module, data, sampled_timesteps=10)
    assert estimate["vlb_sampled_timesteps"] == 10
    assert abs(estimate["vlb_bpd"] - exact["vlb_bpd"]) < 5 * math.hypot(estimate["vlb_stderr"], exact["vlb_stderr"])
    assert vlb_bits_per_dim(_module("edm"), data) == {}  # EDM models have no discrete chain


def test_the_summary_line_shows_the_bound_and_how_it_was_computed():
    result = {"fd": 20.0, "fd_floor": 10.0, "fd_ratio": 2.0, "bpd": 2.5, "sampler": "ddim", "sampler_nfe": 50,
              "grid": "g.png", "vlb_bpd": 3.25, "vlb_stderr": 0.125, "vlb_sampled_timesteps": 50,
              "vlb_num_timesteps": 1000}
    line = summary_line(result)
    assert "| NLL 2.500 bits/dim | VLB 3.250 ± 0.125 bits/dim (50 of 1000 timesteps, stratified) | sampler" in line
    result["vlb_sampled_timesteps"] = None
    assert "(all 1000 timesteps)" in summary_line(result)
    del result["vlb_bpd"]
    assert "VLB" not in summary_line(result)


def test_the_nll_integrates_over_the_ddpm_schedules_own_range():
    """No first_step/max_step workaround: dopri5 stays inside [σ_0, σ_{T−1}] on its own."""
    module = _module(num_timesteps=50)
    result = nll_bits_per_dim(module, _data(), num_images=2)
    assert math.isfinite(result["bpd"]) and result["nll_nfe"] > 0


def test_the_evaluation_solver_is_the_one_the_likelihood_uses():
    from dataclasses import replace

    from pynodeta.ode import IController, SolverSettings

    module, data = _module(num_timesteps=50), _data()
    tight = SolverSettings(method="bosh3", controller=IController(rtol=1e-5, atol=1e-5))
    default = nll_bits_per_dim(module, data, num_images=2)
    module.evaluation = replace(module.evaluation, solver=tight)
    configured = nll_bits_per_dim(module, data, num_images=2)
    assert configured == nll_bits_per_dim(module, data, num_images=2, solver=tight)
    assert configured["nll_nfe"] > default["nll_nfe"]  # bosh3 at 1e-5 takes more evaluations than dopri5 at 1e-3


class _Unlabelled:
    """A training set without a test split of pixels, as an image folder's or a latent DataModule's."""

    def __init__(self, n: int):
        self.images = torch.rand(n, 1, 8, 8) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], 0


def test_data_without_test_images_scores_nothing_and_draws_only_the_grid_unless_features_are_asked_for(tmp_path):
    from pynodeta.metrics import DigitsFeatureExtractor
    from pynodeta.train.diffusion_evaluation import evaluate_samples

    module = _module("edm")
    module.evaluation = EvalSettings(sampler="euler", steps=2, num_samples=300, nll_num_images=0, num_bins=NUM_BINS)
    folder = SimpleNamespace(train_set=_Unlabelled(8), test_set=None)
    result = evaluate_samples(module, tmp_path / "grid.png", folder)  # the digits features, but nothing to compare
    assert math.isnan(result["fd"]) and (tmp_path / "grid.png").is_file()
    drawn = []
    module.denoiser = lambda wrapped=module.denoiser: _counting(wrapped(), drawn)
    evaluate_samples(module, None, folder)
    assert sum(drawn) == 64 * 2  # the grid's 64 images, 2 Euler steps each: not the run's 300
    with pytest.raises(ValueError, match="no test images to compute the FD against.*--reference-stats"):
        evaluate_samples(module, None, folder, extractor=DigitsFeatureExtractor())
    assert sum(drawn) == 64 * 2  # refused before anything was drawn


def _counting(denoiser, drawn: list):
    def counted(x, sigma, **kwargs):
        drawn.append(x.shape[0])
        return denoiser(x, sigma, **kwargs)

    counted.sigma_min, counted.sigma_max = denoiser.sigma_min, denoiser.sigma_max
    return counted


def test_the_real_data_reference_is_cached_per_features_not_per_data_alone():
    from pynodeta.metrics import DigitsFeatureExtractor
    from pynodeta.train.diffusion_evaluation import _reference

    module, data = _module(), _data()
    first = _reference(module, data, DigitsFeatureExtractor())
    assert _reference(module, data, DigitsFeatureExtractor()) is first  # the same features: computed once

    class Halved(DigitsFeatureExtractor):
        def forward(self, images):
            return super().forward(images) / 2

    other = _reference(module, data, Halved())
    assert other is not first and torch.allclose(other["test"], first["test"] / 2)
