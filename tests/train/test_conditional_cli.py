"""``pynodeta sample`` / ``evaluate`` on a class-conditional run: --class-labels and --guidance, and their errors."""

import numpy as np
import pytest
import torch
import yaml

from pynodeta.cli import main
from pynodeta.train.run_loader import build_from_config

EDM2_NET = {"class_path": "pynodeta.models.diffusion.EDM2UNet",
            "init_args": {"img_resolution": 8, "img_channels": 1, "label_dim": 10, "model_channels": 8,
                          "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": []}}


def _run(tmp_path, net=EDM2_NET, label_dropout=0.1) -> str:
    config = {"seed_everything": 0,
              "model": {"class_path": "pynodeta.train.DiffusionModule",
                        "init_args": {"model": net, "objective": {"class_path": "pynodeta.train.EDM2Objective",
                                                                  "init_args": {"logvar_channels": 8}},
                                      "label_dropout": label_dropout, "averaging": "none",
                                      "evaluation": {"steps": 3, "num_samples": 20, "nll_num_images": 2,
                                                     "num_bins": 17, "guidance": 1.5}}},
              "data": {"class_path": "pynodeta.data.DigitsDataModule",
                       "init_args": {"batch_size": 16, "normalization": "diffusion"}}}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    module, _ = build_from_config(run / "config.yaml")
    with torch.no_grad():  # EDM2's gains start at 0: a network whose labels change its output
        for name, parameter in module.model.named_parameters():
            if name.endswith("gain"):
                parameter.fill_(1.0)
    torch.save({"state_dict": module.state_dict(), "global_step": 1}, run / "checkpoints" / "last.ckpt")
    return str(run / "checkpoints" / "last.ckpt")


def test_sample_draws_the_asked_class_with_guidance_and_needs_labels(tmp_path, capsys):
    checkpoint = _run(tmp_path)
    out = tmp_path / "x.npy"
    assert main(["sample", "--checkpoint", checkpoint, "--num", "4", "--class-labels", "2", "--guidance", "2",
                 "--out", str(tmp_path / "g.png"), "--save-tensor", str(out)]) == 0
    guided = np.load(out)
    assert main(["sample", "--checkpoint", checkpoint, "--num", "4", "--class_labels", "2",
                 "--out", str(tmp_path / "u.png"), "--save_tensor", str(out)]) == 0  # snake-case aliases
    assert not np.allclose(guided, np.load(out))  # the run's guidance, 1.5, is not 2
    capsys.readouterr()
    assert main(["sample", "--checkpoint", checkpoint, "--num", "4", "--out", str(tmp_path / "n.png")]) == 2
    assert "pass --class-labels N or --class-labels all" in capsys.readouterr().err
    for bad, message in ((["--class-labels", "three"], "a class number or 'all'"),
                         (["--guidance", "-1"], "--guidance must be a finite number >= 0"),
                         (["--class-labels", "10"], "--class-labels 10: this run's classes are 0 to 9; pass one "
                                                    "of them or --class-labels all"),
                         (["--class-labels", "-1"], "--class-labels -1: this run's classes are 0 to 9")):
        assert main(["sample", "--checkpoint", checkpoint, "--num", "2", "--out", str(tmp_path / "b.png"), *bad]) == 2
        assert message in capsys.readouterr().err, bad
    assert main(["evaluate", "--checkpoint", checkpoint, "--num", "2", "--class-labels", "12",
                 "--out", str(tmp_path / "e.png")]) == 2
    assert "--class-labels 12: this run's classes are 0 to 9" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "e.png").exists()


@pytest.mark.slow
def test_evaluate_reports_class_accuracy_and_fd_per_class(tmp_path, capsys):
    import json

    checkpoint = _run(tmp_path)
    assert main(["evaluate", "--checkpoint", checkpoint, "--json", "--out", str(tmp_path / "e.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["guidance"] == 1.5 and 0 <= result["conditional_accuracy"] <= 1
    assert sorted(result["fd_per_class"], key=int) == [str(c) for c in range(10)]


def test_class_flags_on_an_unconditional_run_are_refused(tmp_path, capsys):
    net = {**EDM2_NET, "init_args": {**EDM2_NET["init_args"], "label_dim": 0}}
    checkpoint = _run(tmp_path, net, label_dropout=0.0)
    assert main(["sample", "--checkpoint", checkpoint, "--num", "2", "--class-labels", "1",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "--class-labels needs a class-conditional run" in capsys.readouterr().err
