"""Latent diffusion end to end: ``pynodeta encode`` → ``pynodeta fit`` on the latents → ``pynodeta sample`` decoded
to images through the VAE the run recorded."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from pynodeta.cli import main
from pynodeta.train.latent_runs import LATENTS_KEY
from pynodeta.train.run_loader import load_run

from ..data.latent_fixtures import save_tiny_vae, write_jpeg_folders

pytest.importorskip("diffusers")

EDM2_NET = {"class_path": "pynodeta.models.diffusion.EDM2UNet",
            "init_args": {"img_resolution": 8, "img_channels": 4, "label_dim": 3, "model_channels": 8,
                          "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": []}}


def _config(tmp_path, latents) -> str:
    config = {
        "seed_everything": 0,
        "num_threads": 1,
        "trainer": {"max_steps": 3, "log_every_n_steps": 1, "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "accelerator": "cpu",
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "latent"}}},
        "model": {"class_path": "pynodeta.train.DiffusionModule",
                  "init_args": {"model": EDM2_NET,
                                "objective": {"class_path": "pynodeta.train.EDM2Objective",
                                              "init_args": {"logvar_channels": 8}},
                                "label_dropout": 0.1, "averaging": "none",
                                # bits/dim (nll_num_images 2) are skipped: a latent model has no pixel density
                                "evaluation": {"steps": 2, "num_samples": 2, "nll_num_images": 2,
                                               "every_n_epochs": 0}}},
        "data": {"class_path": "pynodeta.data.LatentDataModule",
                 "init_args": {"data_dir": str(latents), "batch_size": 4, "xflip": True}},
    }
    path = tmp_path / "latent.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
def test_encode_fit_sample_decodes_to_images(tmp_path, capsys):
    save_tiny_vae(tmp_path / "vae")
    data = write_jpeg_folders(tmp_path / "train", per_class=3)
    latents = tmp_path / "latents"
    assert main(["encode", "--vae", str(tmp_path / "vae"), "--data", str(data), "--out", str(latents),
                 "--resolution", "16", "--shard-size", "5", "--device", "cpu"]) == 0
    assert main(["fit", "--config", _config(tmp_path, latents)]) == 0
    run = tmp_path / "runs" / "latent" / "version_0"
    assert (run / "samples_final.png").is_file()  # fit's own grid, decoded through the VAE
    summary = json.loads((run / "summary.json").read_text())
    assert summary["bpd"] is None or math.isnan(summary["bpd"])
    assert summary["fd"] is None or math.isnan(summary["fd"])
    checkpoint = next((run / "checkpoints").glob("*.ckpt"))
    record = torch.load(checkpoint, weights_only=True)[LATENTS_KEY]
    assert record["vae"] == str((tmp_path / "vae").resolve()) and record["scaling"]["raw_std"][0] == 4.17
    assert load_run(checkpoint).latents == record
    capsys.readouterr()

    out, tensor = tmp_path / "samples.png", tmp_path / "samples.npy"
    assert main(["sample", "--checkpoint", str(checkpoint), "--class-labels", "1", "--num", "3", "--steps", "2",
                 "--device", "cpu", "--out", str(out), "--save-tensor", str(tensor)]) == 0
    assert "decoded by the VAE" in capsys.readouterr().out and out.is_file()
    images = np.load(tensor)
    assert images.shape == (3, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    # decoded pixels are whole 8-bit values: p / 127.5 - 1
    np.testing.assert_allclose((images + 1) * 127.5, np.round((images + 1) * 127.5), atol=1e-3)

    # --vae overrides the recorded folder: a moved VAE is found again, a wrong one is refused by its channels
    (tmp_path / "vae").rename(tmp_path / "moved")
    assert main(["sample", "--checkpoint", str(checkpoint), "--class-labels", "1", "--num", "1", "--steps", "2",
                 "--device", "cpu", "--out", str(out)]) == 2
    assert "pass its folder with --vae" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(checkpoint), "--class-labels", "1", "--num", "1", "--steps", "2",
                 "--device", "cpu", "--out", str(out), "--vae", str(tmp_path / "moved")]) == 0
