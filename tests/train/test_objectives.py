"""Diffusion objectives: each one's loss is its paper's, each builds only what it uses, and configs written before
objectives were composed still load."""

import pytest
import torch
import yaml

from pynodeta.diffusion import DDPMSchedule, EDM2Precond, edm2_loss, edm_loss
from pynodeta.diffusion.preconditioning import EDMPrecond
from pynodeta.models import DDPMUNet
from pynodeta.models.diffusion.edm2_unet import EDM2UNet
from pynodeta.train import (
    DDPMObjective,
    DiffusionModule,
    EDM2Objective,
    EDMObjective,
    EMAAveraging,
    EvalSettings,
    PowerEMAAveraging,
)
from pynodeta.train.diffusion import migrate_legacy_parameters
from pynodeta.train.legacy_configs import upgrade_diffusion_model_section


def _unet(time_scale=250.0):  # EDM's c_noise = ln(σ)/4 scaled to DDPM's timestep range
    return DDPMUNet(image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                    dropout=0.0, norm_groups=1, time_scale=time_scale)


def _edm2_unet():
    return EDM2UNet(8, 1, model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=())


def _x0():
    return torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_edm_objective_loss_is_edms_loss_with_its_preconditioning():
    module = DiffusionModule(_unet(), EDMObjective(sigma_data=0.4, p_mean=-1.0, p_std=1.1), averaging="none")
    ours = module.objective.loss(module.model, _x0(), generator=torch.Generator().manual_seed(0))
    theirs = edm_loss(EDMPrecond(module.model, 0.4), _x0(), p_mean=-1.0, p_std=1.1,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert isinstance(module.denoiser(), EDMPrecond) and module.sigma_range() == (0.002, 80.0)


def test_edm2_objective_loss_is_edm2s_and_its_head_is_drawn_after_the_network():
    torch.manual_seed(0)
    module = DiffusionModule(_edm2_unet(), EDM2Objective(logvar_channels=8))
    torch.manual_seed(0)
    precond = EDM2Precond(_edm2_unet(), 0.5, logvar_channels=8)  # the released order: network, then head
    for ours, theirs in zip(module.state_dict().values(), (*precond.net.state_dict().values(),
                                                            *precond.logvar_fourier.state_dict().values(),
                                                            *precond.logvar_linear.state_dict().values())):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    ours = module.objective.loss(module.model, _x0(), generator=torch.Generator().manual_seed(1))
    theirs = edm2_loss(module.denoiser(), _x0(), generator=torch.Generator().manual_seed(1), p_mean=-0.4, p_std=1.0)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert module.objective.denoiser(module.model) is module.denoiser()  # one view, not one per call
    other = _edm2_unet()
    assert module.objective.denoiser(other).net is other
    assert module.objective.denoiser(other).logvar_linear is module.objective.uncertainty["linear"]


def test_each_objective_builds_only_what_it_uses():
    edm = DiffusionModule(_unet(), EDMObjective())
    assert not hasattr(edm.objective, "schedule") and not hasattr(edm.objective, "timestep_sampler")
    edm2 = DiffusionModule(_edm2_unet(), EDM2Objective(logvar_channels=8))
    assert not hasattr(edm2.objective, "schedule") and edm2.ema is None
    ddpm = DiffusionModule(_unet(time_scale=1.0), DDPMObjective(DDPMSchedule(50)))
    assert ddpm.objective.schedule.num_timesteps == 50 and ddpm.objective.timestep_sampler is not None
    assert (ddpm.evaluation.sampler, ddpm.evaluation.steps) == ("ddim", 50)
    assert (edm.evaluation.sampler, edm.evaluation.steps) == ("heun", 18)
    assert isinstance(ddpm.averaging, EMAAveraging) and isinstance(edm2.averaging, PowerEMAAveraging)


def test_a_network_that_does_not_fit_the_objective_is_refused_when_the_module_is_built():
    with pytest.raises(ValueError, match="time_scale=250"):
        DiffusionModule(_unet(time_scale=1.0), EDMObjective())


def test_a_power_ema_average_needs_its_callback():
    module = DiffusionModule(_edm2_unet(), EDM2Objective(logvar_channels=8))
    module._trainer = type("Trainer", (), {"callbacks": []})()
    with pytest.raises(ValueError, match="no PowerFunctionEMACallback .* tracks sigma_rel 0.1"):
        module.on_fit_start()


def test_more_bits_per_dim_images_than_the_test_split_are_refused_before_training(tmp_path, capsys):
    """The end-of-fit bits/dim read test.images[:count]: a larger count was cut to the split, silently."""
    from pynodeta.cli import main

    argv = ["fit", "--config", "digits_edm", "--num_threads", "1", "--trainer.max_steps", "2", "--plots", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--model.init_args.evaluation.nll_num_images", "361"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pynodeta: error: evaluation.nll_num_images=361, but the test split has 360 images; set "
                          "--model.init_args.evaluation.nll_num_images 360 or fewer") and "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained


# --- configs and checkpoints written before objectives were composed ---------------------------------------------
LEGACY_EDM2 = {"class_path": "pynodeta.train.edm2_module.EDM2DiffusionModule",
               "init_args": {"model": {"class_path": "pynodeta.models.diffusion.EDM2UNet"}, "p_mean": -0.4,
                             "p_std": 1.0, "logvar_channels": 32, "ema_sigma_rel": 0.05, "sampler": "heun",
                             "sampler_steps": 18, "eval_num_samples": 500, "num_bins": 17, "optim": {"x": 1}}}
LEGACY_DDPM = {"class_path": "pynodeta.train.diffusion.DiffusionModule",
               "init_args": {"model": {"class_path": "pynodeta.models.DDPMUNet"}, "objective": "ddpm",
                             "prediction": "v", "num_timesteps": 100, "beta_schedule": "cosine", "ema_decay": 0.995,
                             "sampler": "ddim", "sampler_steps": 50, "num_bins": 17, "sigma_data": 0.5}}


def test_legacy_model_sections_are_read_in_the_composed_form():
    assert upgrade_diffusion_model_section(LEGACY_EDM2) == {
        "class_path": "pynodeta.train.diffusion.DiffusionModule",
        "init_args": {"model": {"class_path": "pynodeta.models.diffusion.EDM2UNet"},
                      "objective": {"class_path": "pynodeta.train.EDM2Objective",
                                    "init_args": {"p_mean": -0.4, "p_std": 1.0, "logvar_channels": 32}},
                      "averaging": {"sigma_rel": 0.05},
                      "evaluation": {"sampler": "heun", "steps": 18, "num_samples": 500, "num_bins": 17},
                      "optim": {"x": 1}}}
    upgraded = upgrade_diffusion_model_section(LEGACY_DDPM)["init_args"]
    schedule = {"class_path": "pynodeta.diffusion.DDPMSchedule",
                "init_args": {"num_timesteps": 100, "beta_schedule": "cosine"}}
    assert upgraded["objective"] == {"class_path": "pynodeta.train.DDPMObjective",
                                     "init_args": {"prediction": "v", "num_bins": 17, "schedule": schedule}}
    assert upgraded["averaging"] == {"decay": 0.995} and "sigma_data" not in upgraded
    current = {"class_path": "pynodeta.train.DiffusionModule", "init_args": {"objective": {"class_path": "x"}}}
    assert upgrade_diffusion_model_section(current) is current


def test_a_legacy_edm2_run_loads_with_its_uncertainty_head(tmp_path):
    from pynodeta.train import load_run
    from pynodeta.train.run_loader import build_from_config

    config = {"seed_everything": 0,
              "model": {"class_path": "pynodeta.train.edm2_module.EDM2DiffusionModule",
                        "init_args": {"model": {"class_path": "pynodeta.models.diffusion.EDM2UNet",
                                                "init_args": {"img_resolution": 8, "img_channels": 1,
                                                              "model_channels": 8, "channel_mult": [1, 2],
                                                              "num_blocks": 1, "attn_resolutions": []}},
                                      "logvar_channels": 8, "ema_sigma_rel": None, "sampler_steps": 2,
                                      "eval_num_samples": 8, "num_bins": 17}},
              "data": {"class_path": "pynodeta.data.DigitsDataModule",
                       "init_args": {"batch_size": 16, "normalization": "diffusion"}}}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    module, _ = build_from_config(run / "config.yaml")
    with torch.no_grad():
        module.objective.uncertainty["linear"].weight.fill_(0.25)
    legacy_names = {name.replace("objective.uncertainty.", "uncertainty."): value
                    for name, value in module.state_dict().items()}
    assert any(name.startswith("uncertainty.") for name in legacy_names)
    torch.save({"state_dict": legacy_names, "global_step": 3}, run / "checkpoints" / "last.ckpt")
    loaded = load_run(run / "checkpoints" / "last.ckpt")
    assert loaded.module.averaging == "none" and loaded.module.evaluation.steps == 2
    torch.testing.assert_close(loaded.module.objective.uncertainty["linear"].weight,
                               torch.full_like(loaded.module.objective.uncertainty["linear"].weight, 0.25))
    assert migrate_legacy_parameters({"model.w": 1, "uncertainty.linear.weight": 2}) == {
        "model.w": 1, "objective.uncertainty.linear.weight": 2}


def test_evaluation_settings_resolve_against_the_objective():
    settings = EvalSettings(steps=7).resolved(EDMObjective())
    assert (settings.sampler, settings.steps) == ("heun", 7)
    with pytest.raises(ValueError, match="needs DDPMObjective"):
        EvalSettings(sampler="ddpm").resolved(EDM2Objective())
    with pytest.raises(FileNotFoundError, match="inception_weights"):
        EvalSettings(inception_weights="/nonexistent/inception.pkl")


def test_fit_refuses_a_legacy_config_and_shows_it_rewritten(tmp_path, capsys):
    from pynodeta.train.cli import main

    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"model": LEGACY_DDPM, "data": {"class_path": "pynodeta.data.DigitsDataModule"}}))
    assert main(["fit", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert "before objectives were composed" in error and "class_path: pynodeta.train.DDPMObjective" in error
