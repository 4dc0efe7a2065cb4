"""A sampler's own options (``clip_x0``, ``eta``, …): checked by name against the sampler, carried by a run's
``evaluation.sampler_options`` into fit's evaluation, ``pynodeta sample`` and ``pynodeta evaluate``, replaced by
``--sampler-option``, and not carried over to a sampler they do not belong to."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pynodeta.cli import main
from pynodeta.diffusion import SAMPLERS, check_sampler_options, karras_sigmas, sampler_option_names
from pynodeta.diffusion.sampler_options import GRID_OPTIONS
from pynodeta.models import DDPMUNet
from pynodeta.train import DDPMObjective, DiffusionModule, EDMObjective
from pynodeta.train.diffusion_evaluation import summary_line
from pynodeta.train.diffusion_sampling import generate_batches
from pynodeta.train.evaluation_settings import EvalSettings
from pynodeta.train.run_loader import load_run

from .test_run_loader import UNET, _write_run


def _ddim_config(**evaluation) -> dict:
    return {"seed_everything": 0,
            "model": {"class_path": "pynodeta.train.diffusion.DiffusionModule",
                      "init_args": {"model": {"class_path": "pynodeta.models.DDPMUNet", "init_args": UNET},
                                    "objective": {"class_path": "pynodeta.train.DDPMObjective"},
                                    "evaluation": {"sampler": "ddim", "steps": 4, "num_samples": 8,
                                                   "nll_num_images": 1, "num_bins": 17, **evaluation}}},
            "data": {"class_path": "pynodeta.data.DigitsDataModule",
                     "init_args": {"batch_size": 16, "normalization": "diffusion"}}}


@pytest.fixture
def clipped_run(tmp_path):
    """A DDPM run whose evaluation draws DDIM with x̂0 clipped, and a network whose x̂0 leaves [-1, 1]."""
    checkpoint = _write_run(tmp_path, _ddim_config(sampler_options={"clip_x0": True}))
    return checkpoint


def _draw(module, sampler="ddim", **options):
    batches = generate_batches(module, 6, sampler, 4, generator=torch.Generator().manual_seed(3), **options)
    return torch.cat([batch.images for batch in batches])


# --- the check against the sampler's signature -------------------------------------------------------------
def test_the_options_of_a_sampler_are_the_keywords_of_its_signature():
    assert sampler_option_names("ddim") == ("eta", "clip_x0")
    # then the grid's, which every noise-level sampler takes (dpm_adaptive uses only the grid's ends)
    assert sampler_option_names("heun") == ("s_churn", "s_tmin", "s_tmax", "s_noise", *GRID_OPTIONS)
    assert sampler_option_names("dpmpp_2m") == GRID_OPTIONS and sampler_option_names("ode") == ()
    assert sampler_option_names("dpm_adaptive")[-2:] == ("sigma_min", "sigma_max")
    assert "rho" not in sampler_option_names("dpm_adaptive") and "sigma_min" not in sampler_option_names("ddpm")
    assert check_sampler_options("ddim", None) == {}
    assert check_sampler_options("ddim", {"clip_x0": True, "eta": 0.5}) == {"clip_x0": True, "eta": 0.5}


@pytest.mark.parametrize("sampler, options, error, message", [
    ("heun", {"clip_x0": True}, ValueError, "sampler 'heun' takes no option 'clip_x0'; its options: s_churn, s_tmin"),
    ("dpmpp_2m", {"eta": 1.0}, ValueError, "its options: sigma_min, sigma_max, rho"),
    ("ddim", {"sigma_min": 0.1}, ValueError, r"sampler 'ddim' walks the DDPM schedule's timesteps \(steps sets "
                                             r"them\) and takes no 'sigma_min'"),
    ("dpm_adaptive", {"rho": 3.0}, ValueError, "sampler 'dpm_adaptive' takes no option 'rho'"),
    ("heun", {"sigma_min": 0}, ValueError, r"sigma_min must be a finite number > 0 \(a noise level"),
    ("euler", {"sigma_max": float("inf")}, ValueError, "sigma_max must be a finite number > 0"),
    ("euler", {"rho": True}, ValueError, r"rho must be a finite number > 0 \(EDM uses 7\), got True"),
    ("ode", {"rtol": 1e-3}, ValueError, "the ode sampler takes no options; set its solve with evaluation.solver"),
    ("heun", {"s_churn": True}, TypeError, r"option 's_churn' of sampler 'heun' is a number \(default 0.0\), got "
                                           r"True; pass a number, e.g. s_churn=0.0"),
    ("lms", {"order": False}, TypeError, "option 'order' of sampler 'lms' is a number"),
    ("ddim", {"eta": [0.5]}, TypeError, "option 'eta' of sampler 'ddim' must be a number"),
    ("ddim", ["clip_x0"], TypeError, "must map option names to values"),
])
def test_a_wrong_option_is_refused_by_name(sampler, options, error, message):
    with pytest.raises(error, match=message):
        check_sampler_options(sampler, options, "evaluation.sampler_options")


def test_the_run_settings_check_their_options_against_the_resolved_sampler():
    settings = EvalSettings(sampler_options={"clip_x0": True}).resolved(DDPMObjective())  # DDIM by default
    assert settings.sampler == "ddim" and settings.sampler_options == {"clip_x0": True}
    assert EvalSettings(sampler_options={}).resolved(DDPMObjective()).sampler_options is None
    with pytest.raises(ValueError, match="evaluation.sampler_options: sampler 'heun' takes no option 'clip_x0'"):
        EvalSettings(sampler_options={"clip_x0": True}).resolved(EDMObjective())  # Heun by default


# --- drawing with them -----------------------------------------------------------------------------------
def test_clipped_ddim_ends_inside_the_data_range_and_the_run_passes_its_options(clipped_run):
    module = load_run(clipped_run).module.eval()
    unclipped = _draw(module, sampler_options={})
    assert unclipped.abs().max() > 1  # an untrained network's x̂0 leaves [-1, 1]: clipping has work to do
    clipped = _draw(module)  # the run's own options: clip_x0
    # the last DDIM step to σ = 0 returns x̂0 itself, clipped
    assert clipped.abs().max() <= 1
    torch.testing.assert_close(clipped, _draw(module, sampler_options={"clip_x0": True}), rtol=0, atol=0)


def test_the_runs_options_stay_with_its_sampler_and_explicit_ones_are_checked(clipped_run):
    module = load_run(clipped_run).module.eval()
    # euler is not the run's sampler: the run's clip_x0 does not follow it, and euler draws as without options
    torch.testing.assert_close(_draw(module, "euler"), _draw(module, "euler", sampler_options={}), rtol=0, atol=0)
    with pytest.raises(ValueError, match="sampler 'euler' takes no option 'clip_x0'"):
        _draw(module, "euler", sampler_options={"clip_x0": True})
    with pytest.raises(TypeError, match="clip_x0 must be True or False"):  # a value the sampler itself refuses
        _draw(module, sampler_options={"clip_x0": "yes"})


def test_the_summary_line_names_the_options():
    result = {"fd": 2.0, "fd_floor": 1.0, "fd_ratio": 2.0, "bpd": 3.0, "sampler": "ddim",
              "sampler_options": {"clip_x0": True}, "sampler_nfe": 50, "grid": "g.png"}
    assert "| sampler ddim (clip_x0=True), NFE 50 |" in summary_line(result)
    assert "| sampler ddim, NFE 50 |" in summary_line({**result, "sampler_options": {}})


# --- the noise-level grid ---------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", [EDMObjective(), DDPMObjective()], ids=["edm", "ddpm"])
def test_the_grid_options_set_the_ends_and_rho_of_the_karras_levels(objective):
    low, high = objective.sigma_range(None)
    default = objective.sampling_sigmas(None, "heun", 5)
    torch.testing.assert_close(default, karras_sigmas(5, low, high), rtol=0, atol=0)
    assert torch.equal(objective.sampling_sigmas(None, "heun", 5, sigma_min=None, rho=7.0), default)
    grid = objective.sampling_sigmas(None, "dpmpp_2m", 5, sigma_min=0.3, sigma_max=20.0, rho=3.0)
    torch.testing.assert_close(grid, karras_sigmas(5, 0.3, 20.0, 3.0), rtol=0, atol=0)
    assert float(grid[-2]) == pytest.approx(0.3) and float(grid[0]) == pytest.approx(20.0) and grid[-1] == 0


def test_a_grid_outside_the_models_noise_levels_is_refused_not_clamped():
    objective = DDPMObjective()  # a DDPM schedule's denoiser is defined on [σ_1, σ_T] only
    low, high = objective.sigma_range(None)
    with pytest.raises(ValueError, match=r"sigma_min=0.001 lies outside the noise levels this model's denoiser is "
                                         r"defined on, \[0.01\d*, 157.\d*\]"):
        objective.sampling_sigmas(None, "heun", 5, sigma_min=1e-3)
    with pytest.raises(ValueError, match="sigma_max=200 lies outside"):
        objective.sampling_sigmas(None, "heun", 5, sigma_max=200.0)
    with pytest.raises(ValueError, match=r"the grid's sigma_min \(200\) must lie below its sigma_max \(80\)"):
        EDMObjective().sampling_sigmas(None, "heun", 5, sigma_min=200.0)  # EDM's denoiser takes any σ > 0
    with pytest.raises(ValueError, match="takes no grid options"):
        objective.sampling_sigmas(None, "ddim", 5, sigma_min=1.0)
    assert float(EDMObjective().sampling_sigmas(None, "heun", 5, sigma_max=500.0)[0]) == pytest.approx(500.0)
    assert low < 0.02 and high > 150


def test_a_run_whose_grid_leaves_the_models_noise_levels_is_refused_when_it_is_built():
    evaluation = EvalSettings(sampler="dpmpp_2m", sampler_options={"sigma_min": 1e-4})
    with pytest.raises(ValueError, match="sampler option sigma_min=0.0001 lies outside the noise levels"):
        DiffusionModule(DDPMUNet(**UNET), DDPMObjective(), evaluation=evaluation)
    built = DiffusionModule(DDPMUNet(**UNET, time_scale=250.0), EDMObjective(), evaluation=evaluation)  # any σ > 0
    assert built.evaluation.sampler_options == {"sigma_min": 1e-4}


@pytest.mark.parametrize("sampler, own", [("heun", {"s_churn": 2.0, "s_tmax": 100.0}), ("dpmpp_2m", {}),
                                         ("dpm_2_ancestral", {})])
def test_a_run_drawn_with_grid_options_walks_that_grid(clipped_run, sampler, own):
    """The draw equals the sampler called by hand on the run's denoiser with the Karras grid those options give,
    and the sampler receives only its own options."""
    module = load_run(clipped_run).module.eval()
    grid = {"sigma_min": 0.4, "sigma_max": 60.0, "rho": 5.0}
    drawn = _draw(module, sampler, sampler_options={**own, **grid})
    sigmas = karras_sigmas(4, 0.4, 60.0, 5.0)
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(6, *module.sample_shape, generator=generator)
    with torch.no_grad():
        by_hand = SAMPLERS[sampler](module.denoiser(), noise * sigmas[0], sigmas, generator=generator, disable=True,
                                    **own)
    torch.testing.assert_close(drawn, by_hand, rtol=0, atol=0)
    assert not torch.equal(drawn, _draw(module, sampler, sampler_options=own))  # the grid changed the images


# --- the commands ----------------------------------------------------------------------------------------
def test_sample_uses_the_runs_options_and_replaces_them_with_the_flags(clipped_run, tmp_path, capsys):
    def sample(*flags):
        out = tmp_path / "images.npy"
        assert main(["sample", "--checkpoint", str(clipped_run), "--num", "6", "--out", "none",
                     "--save-tensor", str(out), *flags]) == 0
        return capsys.readouterr().out, np.load(out)

    line, images = sample()
    assert "sampler ddim (clip_x0=True), NFE 4" in line and np.abs(images).max() <= 1
    line, images = sample("--sampler-option", "clip_x0=false", "--sampler-option", "eta=0.5")
    assert "sampler ddim (clip_x0=False, eta=0.5), NFE 4" in line and np.abs(images).max() > 1
    line, _ = sample("--sampler", "euler")
    assert "sampler euler, NFE 4" in line
    line, _ = sample("--sampler", "euler", "--sampler-option", "sigma_min=0.2")
    assert "sampler euler (sigma_min=0.2), NFE 4" in line


@pytest.mark.parametrize("flags, message", [
    (["--sampler-option", "clip"], "--sampler-option takes NAME=VALUE, e.g. clip_x0=true; got 'clip'"),
    (["--sampler-option", "clip_x0=[1]"], "the value must be a number, a string or true/false"),
    (["--sampler-option", "eta=0", "--sampler-option", "eta=1"], "'eta' is given twice"),
    (["--sampler-option", "churn=1"], "--sampler-option: sampler 'ddim' takes no option 'churn'; its options: eta, "
                                      "clip_x0"),
    (["--sampler", "heun", "--sampler-option", "clip_x0=true"], "sampler 'heun' takes no option 'clip_x0'"),
    (["--sampler", "heun", "--sampler-option", "sigma_min=1e-5"], "sampler option sigma_min=1e-05 lies outside the "
                                                                  "noise levels this model's denoiser is defined on"),
    (["--sampler", "heun", "--sampler-option", "s_churn=true"], "--sampler-option: option 's_churn' of sampler "
                                                                "'heun' is a number (default 0.0), got True"),
    (["--sampler-option", "eta=false"], "option 'eta' of sampler 'ddim' is a number"),
])
def test_sample_refuses_bad_options_before_drawing(clipped_run, tmp_path, capsys, flags, message):
    out = tmp_path / "g.png"
    assert main(["sample", "--checkpoint", str(clipped_run), "--num", "2", "--out", str(out), *flags]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_evaluate_draws_with_the_options_and_its_cache_tells_them_apart(clipped_run, tmp_path, capsys):
    def evaluate(*flags):
        code = main(["evaluate", "--checkpoint", str(clipped_run), "--num", "4", "--nll-images", "1", "--json",
                     "--out", str(tmp_path / "e.png"), "--cache", str(tmp_path / "cache"), *flags])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = evaluate()
    assert code == 0 and json.loads(out)["sampler_options"] == {"clip_x0": True}
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["sampler_options"] == {"clip_x0": True}
    code, _, err = evaluate("--sampler-option", "clip_x0=false")
    assert code == 2 and "holds the blocks of another evaluation (sampler_options: cached {'clip_x0': True}" in err
