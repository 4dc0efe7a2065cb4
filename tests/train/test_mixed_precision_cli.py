"""``pynodeta fit --config digits_* --trainer.precision bf16-mixed`` end to end, then ``sample --precision``."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from pynodeta.cli import main

TINY = {"digits_edm2": ["--model.init_args.model.init_args.model_channels", "8"],
        "digits_edm": ["--model.init_args.model.init_args.channels", "8"],
        "digits_ddpm": ["--model.init_args.model.init_args.channels", "8"]}


def _fit(tmp_path, config: str) -> Path:
    assert main(["fit", "--config", config, "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "1",
                 "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                 "--trainer.log_every_n_steps", "1", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                 "--num_threads", "1",
                 "--plots", "false", "--model.init_args.evaluation.num_samples", "16",
                 "--model.init_args.evaluation.nll_num_images", "1", "--model.init_args.evaluation.steps", "2",
                 *TINY[config]]) == 0
    return tmp_path / "runs" / config / "version_0"


@pytest.mark.parametrize("config", [pytest.param("digits_ddpm", marks=pytest.mark.slow),  # 7 s: its 1000-step bound
                                    "digits_edm", "digits_edm2"])  # 2-3 s each
def test_fit_in_bf16_mixed_then_sample_in_bf16(tmp_path, capsys, config):
    run = _fit(tmp_path, config)
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
    with open(run / "metrics.csv") as f:
        losses = [float(row["train/loss_step"]) for row in csv.DictReader(f) if row.get("train/loss_step")]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    checkpoint = run / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    floats = [v for v in state["state_dict"].values() if v.is_floating_point()]
    averages = state["pynodeta_weight_averages"]
    assert set(averages) == {"power_ema"}  # every digits config evaluates a power-function EMA profile
    profiles = averages["power_ema"]["state"]["averages"]
    floats += [v for average in profiles for v in average.values() if v.is_floating_point()]
    assert floats and {v.dtype for v in floats} == {torch.float32}  # weights and averages stay float32

    capsys.readouterr()
    out = tmp_path / "bf16.png"
    assert main(["sample", "--checkpoint", str(checkpoint), "--precision", "bf16", "--steps", "3", "--num", "4",
                 "--out", str(out)]) == 0
    assert out.is_file() and "4 images" in capsys.readouterr().out
    if config == "digits_edm2":  # evaluate draws its images in bf16 too (its NLL stays float32)
        assert main(["evaluate", "--checkpoint", str(checkpoint), "--precision", "bf16-mixed", "--num", "4",
                     "--steps", "2", "--nll-images", "1", "--out", str(tmp_path / "eval.png"), "--json"]) == 0
        assert math.isfinite(json.loads(capsys.readouterr().out)["fd"])
    assert main(["sample", "--checkpoint", str(checkpoint), "--precision", "bf8", "--num", "1",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "--precision must be one of 32, bf16, 16" in capsys.readouterr().err
