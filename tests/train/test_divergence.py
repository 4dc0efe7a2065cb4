"""A diverging run stops at its first non-finite training loss: exit 1, one error line naming the step,
the checkpoint and EMA snapshots on disk finite and from before it, no end-of-fit evaluation."""

from __future__ import annotations

import torch

from pynodeta.cli import main

from .test_cli import _write_config


def _diverging_config(tmp_path, nan_from_step: int) -> str:
    def edit(config):
        config["trainer"].update(max_epochs=3, limit_train_batches=0.3)  # about 11 steps per epoch
        config["trainer"]["callbacks"] = [
            {"class_path": "pynodeta.train.ModelCheckpoint",
             "init_args": {"save_top_k": 0, "every_n_train_steps": 2}},
            {"class_path": "pynodeta.train.ema_callback.PowerFunctionEMACallback",
             "init_args": {"target": "linear", "snapshot_every": 1, "snapshot_dir": str(tmp_path / "phema")}}]
        config["model"] = {"class_path": "tests.train.tiny_models.TinyDivergingRegression",
                           "init_args": {"nan_from_step": nan_from_step}}
    return _write_config(tmp_path, edit)


def _all_finite(tree) -> bool:
    if isinstance(tree, torch.Tensor):
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, dict):
        return all(_all_finite(value) for value in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(_all_finite(value) for value in tree)
    return True


def test_a_nan_loss_stops_the_run_at_that_step(tmp_path, capsys):
    status = main(["fit", "--config", _diverging_config(tmp_path, nan_from_step=5), "--test_after_fit", "true"])
    out, err = capsys.readouterr()
    assert status == 1
    (line,) = [line for line in err.splitlines() if line.startswith("pynodeta: error:")]
    assert "the training loss is nan at global step 5 (epoch 0)" in line and "last.ckpt" in line
    assert "Traceback" not in err
    assert "pynodeta summary" not in out  # no evaluation after the failed fit

    last = torch.load(tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt",
                      weights_only=False)
    assert last["global_step"] == 4  # the last periodic save before the NaN
    phema = last["pynodeta_weight_averages"]["power_ema"]["state"]
    # (not the whole file: ModelCheckpoint's state holds an infinite "no score yet")
    assert _all_finite([last["state_dict"], last["optimizer_states"], phema["averages"]])
    snapshots = sorted((tmp_path / "phema").iterdir())
    assert len(snapshots) == 5  # steps 1..5: the NaN loss of the sixth batch never reached the weights
    for path in snapshots:
        assert _all_finite(torch.load(path, weights_only=False)), path.name


def test_a_finite_run_is_not_stopped(tmp_path, capsys):
    assert main(["fit", "--config", _diverging_config(tmp_path, nan_from_step=10_000)]) == 0
    assert "pynodeta: error" not in capsys.readouterr().err
