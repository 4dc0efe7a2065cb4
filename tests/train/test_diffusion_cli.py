"""``pynodeta fit`` with a DiffusionModule, then ``pynodeta sample`` and ``pynodeta evaluate`` on its checkpoint."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from pynodeta.cli import main
from pynodeta.train import shipped_configs

UNET = {"image_size": 8, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
        "dropout": 0.0, "norm_groups": 1, "positional_embedding": True, "bias_init": "zero_operand"}


OBJECTIVES = {"ddpm": "pynodeta.train.DDPMObjective", "edm": "pynodeta.train.EDMObjective"}


def _config(tmp_path, objective: str) -> str:
    config = {
        "seed_everything": 0,
        "num_threads": 1,
        "trainer": {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "log_every_n_steps": 1,
                    "enable_model_summary": False, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": objective}}},
        "model": {"class_path": "pynodeta.train.diffusion.DiffusionModule",
                  "init_args": {"model": {"class_path": "pynodeta.models.DDPMUNet",
                                          "init_args": {**UNET, "time_scale": 250.0 if objective == "edm" else 1.0}},
                                "objective": {"class_path": OBJECTIVES[objective]},
                                "evaluation": {"sampler": "heun", "steps": 3, "num_samples": 16,
                                               "nll_num_images": 2, "num_bins": 17}}},
        "data": {"class_path": "pynodeta.data.DigitsDataModule",
                 "init_args": {"batch_size": 16, "normalization": "diffusion"}},
    }
    path = tmp_path / f"{objective}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["ddpm", "edm"])
def test_fit_sample_evaluate(tmp_path, capsys, objective):
    assert main(["fit", "--config", _config(tmp_path, objective)]) == 0
    run = tmp_path / "runs" / objective / "version_0"
    line = capsys.readouterr().out
    bound = r" \| VLB [\d.]+ ± [\d.]+ bits/dim \(all 1000 timesteps\)" if objective == "ddpm" else ""
    match = re.search(r"pynodeta summary: FD ([\d.]+) / floor ([\d.]+) = [\d.]+× \| NLL ([\d.]+) bits/dim"
                      rf"{bound} \| sampler heun, NFE 5 \| grid (\S+)", line)
    assert match, line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sampler_nfe"] == 5  # Heun on 3 levels + 0: two corrected steps and a last Euler step
    assert (run / "samples_final.png").is_file()
    ckpt = str(next((run / "checkpoints").glob("*.ckpt")))
    checkpoint = torch.load(ckpt, weights_only=False)
    assert {"pynodeta_weight_averages", "pynodeta_rng_states"} <= set(checkpoint)
    assert set(checkpoint["pynodeta_weight_averages"]) == {"ema"}

    out = tmp_path / "samples.png"
    assert main(["sample", "--checkpoint", ckpt, "--sampler", "euler",
                 "--steps", "4", "--num", "4", "--out", str(out)]) == 0
    assert "4 images, sampler euler, NFE 4" in capsys.readouterr().out and out.is_file()
    assert main(["evaluate", "--checkpoint", ckpt, "--num", "8", "--steps", "2",
                 "--nll-images", "1", "--out", str(tmp_path / "eval.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fd"] > 0 and result["fd_floor"] > 0 and result["bpd"] > 0
    if objective == "ddpm":  # the exact bound over all 1000 timesteps by default
        assert result["vlb_bpd"] > 0 and result["vlb_sampled_timesteps"] is None
    assert ("vlb_bpd" in result) == (objective == "ddpm")
    # with the run's own settings and averaged weights, evaluate gives fit's FD again
    assert main(["evaluate", "--checkpoint", ckpt, "--nll-images", "1", "--out", str(tmp_path / "eval.png"),
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["weights"] == "ema" and again["fd"] == pytest.approx(summary["fd"], rel=1e-6, abs=1e-9)


def test_sample_refuses_a_missing_checkpoint_and_an_unknown_sampler(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path / "none.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", "x", "--sampler", "rk4"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_shipped_diffusion_configs_exist():
    assert {"digits_ddpm", "digits_edm", "cifar10_ddpm", "cifar10_ddpm_vanishing",
            "cifar10_ddpm_fixed"} <= set(shipped_configs())
