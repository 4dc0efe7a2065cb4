"""``pynodeta phema`` and the sweep helpers."""

import csv

import pytest
import torch
from torch import nn

from pynodeta.cli import main
from pynodeta.ema import PowerFunctionEMA, list_snapshots, posthoc_reconstruct
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


def _run_checkpoint(path, snapshots, step=60, weight_shape=(3, 4), run_id=None):
    """A checkpoint of the run that wrote ``snapshots`` (its power-function EMA carries the run's identity)."""
    run_id = run_id or list_snapshots(snapshots)[0].run_id
    torch.save({"state_dict": {"model.weight": torch.zeros(weight_shape), "model.bias": torch.zeros(3), "other": 1.0},
                "epoch": 3, "global_step": step,
                "pynodeta_weight_averages": {"power_ema": {"target": "model", "state": {"run_id": run_id}}}}, path)
    return path


def test_reconstruct_into_a_lightning_checkpoint(snapshots, tmp_path):
    checkpoint = _run_checkpoint(tmp_path / "run.ckpt", snapshots)
    out = tmp_path / "phema.ckpt"
    args = ["phema", "--snapshots", str(snapshots), "--sigma-rel", "0.1", "--checkpoint", str(checkpoint)]
    assert main([*args, "--out", str(out)]) == 0
    saved = torch.load(out, weights_only=True)
    assert saved["epoch"] == 3 and saved["state_dict"]["other"] == 1.0
    assert torch.equal(saved["state_dict"]["model.weight"], posthoc_reconstruct(snapshots, 0.1)["weight"])
    assert main([*args, "--out", str(out), "--target", "net"]) == 2


@pytest.mark.parametrize(("checkpoint_args", "message"), [
    ({"run_id": "another-run"}, "checkpoint of run another-run"),
    ({"weight_shape": (3, 5)}, "has shape (3, 4) in the snapshots but (3, 5)"),
    ({"step": 30}, "beyond the checkpoint's step 30"),
])
def test_snapshots_of_another_run_step_or_network_are_refused(snapshots, tmp_path, capsys, checkpoint_args, message):
    checkpoint = _run_checkpoint(tmp_path / "run.ckpt", snapshots, **checkpoint_args)
    out = tmp_path / "phema.ckpt"
    assert main(["phema", "--snapshots", str(snapshots), "--sigma-rel", "0.1", "--checkpoint", str(checkpoint),
                 "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


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


def test_sweep_vets_the_config_beside_the_checkpoint_before_importing_it(snapshots, tmp_path, capsys):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = _run_checkpoint(run / "checkpoints" / "last.ckpt", snapshots)
    (run / "config.yaml").write_text(
        "model:\n  class_path: pynodeta.train.DiffusionModule\n  init_args: {}\n"
        f"data:\n  class_path: subprocess.Popen\n  init_args:\n    args: [touch, {marker}]\n")
    assert main(["phema", "--snapshots", str(snapshots), "--sweep", "0.05:0.1:0.05", "--checkpoint",
                 str(checkpoint), "--out-dir", str(tmp_path / "sweep")]) == 2
    assert "'subprocess.Popen', which is outside the allowed modules" in capsys.readouterr().err
    assert not marker.exists()


def test_a_damaged_or_nan_snapshot_is_named(snapshots, tmp_path, capsys):
    files = sorted(snapshots.iterdir())
    payload = torch.load(files[2], weights_only=True)
    payload["profiles"][0]["state_dict"]["weight"][0, 0] = float("nan")
    torch.save(payload, files[2])
    assert main(["phema", "--snapshots", str(snapshots), "--sigma-rel", "0.07", "--out", str(tmp_path / "x.pt")]) == 2
    assert f"snapshot {files[2].name}: weight of the profile σ_rel 0.05 holds NaN" in capsys.readouterr().err
    del payload["profiles"][0]["state_dict"]["weight"]
    torch.save(payload, files[2])
    assert main(["phema", "--snapshots", str(snapshots), "--sigma-rel", "0.07", "--out", str(tmp_path / "x.pt")]) == 2
    assert "the profile σ_rel 0.05 lacks weight" in capsys.readouterr().err
    files[2].write_bytes(files[3].read_bytes()[:100])
    assert main(["phema", "--snapshots", str(snapshots), "--sigma-rel", "0.07", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pynodeta phema: error: snapshot") and "cannot be read" in err and len(err.splitlines()) == 1


def test_outputs_that_cannot_be_written_are_refused_before_the_work(snapshots, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    base = ["phema", "--snapshots", str(snapshots)]
    assert main([*base, "--sigma-rel", "0.07", "--out", str(tmp_path / "afile" / "m.pt")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main([*base, "--sweep", "0.05:0.1:0.05", "--out-dir", str(tmp_path / "afile")]) == 2
    assert "is a file; name a folder" in capsys.readouterr().err
    assert main([*base, "--sigma-rel", "0.07", "--out", str(tmp_path), "--num-samples", "2"]) == 2
    assert "is a folder; name a file" in capsys.readouterr().err
    assert main([*base, "--sweep", "0.05:0.1:0.05", "--num-samples", "0"]) == 2
    assert "--num-samples must be >= 2" in capsys.readouterr().err
