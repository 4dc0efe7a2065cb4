"""``pynodeta phema`` and the sweep helpers."""

import csv

import pytest
import torch
from torch import nn

from pynodeta.cli import main
from pynodeta.ema import PowerFunctionEMA, posthoc_reconstruct
from pynodeta.ema.sweep import parse_sweep, sweep_sigma_rels, write_sweep


@pytest.fixture
def snapshots(tmp_path):
    torch.manual_seed(0)
    module = nn.Linear(4, 3)
    ema = PowerFunctionEMA(module)
    for step in range(1, 61):
        with torch.no_grad():
            module.weight.add_(0.05 * torch.randn_like(module.weight))
        ema.update(step)
        if step % 10 == 0:
            ema.save_snapshot(tmp_path / "snaps", step)
    return tmp_path / "snaps"


def test_reconstruct_to_a_file(snapshots, tmp_path):
    out = tmp_path / "model.pt"
    assert main(["phema", "--snapshots", str(snapshots), "--sigma-rel", "0.07", "--step", "40", "--out", str(out)]) == 0
    saved = torch.load(out, weights_only=True)
    assert saved["sigma_rel"] == 0.07 and saved["step"] == 40
    expected = posthoc_reconstruct(snapshots, 0.07, step=40)
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in expected.items())


def test_reconstruct_into_a_lightning_checkpoint(snapshots, tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(3, 4), "model.bias": torch.zeros(3), "other": 1.0},
                "epoch": 3}, checkpoint)
    out = tmp_path / "phema.ckpt"
    args = ["phema", "--snapshots", str(snapshots), "--sigma-rel", "0.1", "--checkpoint", str(checkpoint)]
    assert main([*args, "--out", str(out)]) == 0
    saved = torch.load(out, weights_only=False)
    assert saved["epoch"] == 3 and saved["state_dict"]["other"] == 1.0
    assert torch.equal(saved["state_dict"]["model.weight"], posthoc_reconstruct(snapshots, 0.1)["weight"])
    assert main([*args, "--out", str(out), "--target", "net"]) == 2


def test_bad_input_exits_with_status_2(snapshots, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["phema", "--snapshots", str(tmp_path / "empty"), "--sigma-rel", "0.07", "--out", "x.pt"]) == 2
    assert "no snapshots" in capsys.readouterr().err
    assert main(["phema", "--snapshots", str(snapshots), "--sigma-rel", "0.07"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["phema", "--snapshots", str(snapshots), "--sigma-rel", "0.5", "--out", "x.pt"]) == 2
    assert main(["phema", "--snapshots", str(snapshots), "--sweep", "0.02:0.2:0.01"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_parse_sweep():
    assert parse_sweep("0.02:0.20:0.01") == pytest.approx([0.02 + 0.01 * i for i in range(19)])
    with pytest.raises(ValueError, match="start:stop:step"):
        parse_sweep("0.02:0.2")
    with pytest.raises(ValueError, match="--sweep values must be in"):
        parse_sweep("0.1:0.4:0.1")


@pytest.mark.parametrize("text, message", [
    ("a:b:c", r"--sweep start 'a' is not a number: --sweep must be start:stop:step"),
    ("0.05:x:0.01", r"--sweep stop 'x' is not a number"),
    ("nan:0.1:0.01", r"--sweep start must be finite, got 'nan'.*expected start:stop:step"),
    ("0.05:inf:0.01", r"--sweep stop must be finite, got 'inf'"),
    ("0.05:0.1:nan", r"--sweep step must be finite"),
    ("0.05:0.1:0", r"--sweep step must be > 0"),
    ("0.05:0.1:-0.01", r"--sweep step must be > 0"),
    ("0.1:0.05:0.01", r"--sweep stop must be >= start"),
    ("0.05:0.1:1e-11", r"gives 5e\+09 values, more than the 1000 allowed"),
    ("0:1e308:1e-308", r"gives inf values, more than the 1000 allowed"),
])
def test_parse_sweep_refuses_bad_ranges_quickly_and_names_the_option(text, message):
    """'0.05:0.1:1e-11' used to build a list of five billion floats; 'a:b:c' and 'nan:...' gave messages
    that did not name --sweep, '0.05:inf:0.01' an OverflowError traceback."""
    with pytest.raises(ValueError, match=message):
        parse_sweep(text)


def test_parse_sweep_allows_up_to_1000_values():
    assert len(parse_sweep("0.001:0.2:0.0002")) == 996
    assert parse_sweep("0.05:0.05:0.01") == [0.05]


def test_sweep_finds_the_width_closest_to_a_known_profile(snapshots, tmp_path):
    target = posthoc_reconstruct(snapshots, 0.08)  # scoring by distance to it puts the optimum at 0.08

    def score(state, sigma_rel):
        return sum((state[k] - target[k]).pow(2).sum().item() for k in target)

    rows = sweep_sigma_rels(snapshots, parse_sweep("0.04:0.12:0.02"), score)
    assert min(rows, key=lambda r: r["score"])["sigma_rel"] == pytest.approx(0.08)
    paths = write_sweep(rows, tmp_path / "sweep", "distance", reference={"zero": 0.0})
    with open(paths["csv"]) as file:
        assert len(list(csv.reader(file))) == 6
    assert paths["png"].stat().st_size > 0


def test_sweep_rebuilds_the_data_from_the_run_config(tmp_path):
    from pynodeta.data import DigitsDataModule
    from pynodeta.ema.sweep_fd import datamodule_of_run

    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir()
    with pytest.raises(ValueError, match="no config.yaml beside"):
        datamodule_of_run(checkpoint)
    (tmp_path / "config.yaml").write_text("data:\n  class_path: pynodeta.data.DigitsDataModule\n"
                                          "  init_args:\n    batch_size: 8\n    normalization: diffusion\n")
    datamodule = datamodule_of_run(checkpoint)
    assert isinstance(datamodule, DigitsDataModule) and datamodule.batch_size == 8
