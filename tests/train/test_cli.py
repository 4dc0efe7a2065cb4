"""The ``pynodeta`` command end to end: a one-batch fit, test from its checkpoint, bad input."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from pynodeta.cli import main
from pynodeta.train import shipped_configs

TINY_CONFIG = {
    "seed_everything": 0,
    "num_threads": 1,
    "trainer": {
        # fractions: the command line reads an integer 1 here as 1.0, i.e. every batch
        "max_epochs": 1, "limit_train_batches": 0.05, "limit_val_batches": 0.5, "limit_test_batches": 0.5,
        "log_every_n_steps": 1, "enable_model_summary": False, "num_sanity_val_steps": 0,
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "SAVE_DIR"}},
    },
    "model": {
        "class_path": "pynodeta.train.NODEClassifier",
        "init_args": {
            "model": {"class_path": "tests.train.tiny_models.TinyDigitsClassifier", "init_args": {"width": 8}},
            "optim": {"class_path": "pynodeta.train.TABNAdamW"},
        },
    },
    "data": {"class_path": "pynodeta.data.DigitsDataModule", "init_args": {"batch_size": 32}},
}


def _write_config(tmp_path, edit=None) -> str:
    config = json.loads(json.dumps(TINY_CONFIG).replace("SAVE_DIR", str(tmp_path / "runs")))
    if edit is not None:
        edit(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_one_batch_fit_writes_metrics_checkpoint_config_and_summary(tmp_path, capsys):
    assert main(["fit", "--config", _write_config(tmp_path), "--test_after_fit", "true"]) == 0
    out = capsys.readouterr().out
    assert "pynodeta summary: test accuracy" in out and "train backward" in out
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    saved = yaml.safe_load((run / "config.yaml").read_text())  # the resolved config, beside the checkpoints
    assert saved["model"]["init_args"]["optim"]["init_args"]["lr"] == 1e-3  # defaults filled in
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    nfe = [float(r["train/nfe_forward"]) for r in rows if r.get("train/nfe_forward")]
    assert nfe and all(v > 0 for v in nfe)
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["test/acc"] <= 1.0 and summary["train/nfe_backward"] > 0

    # the saved config and checkpoint reproduce the run's test evaluation
    assert main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(checkpoint)]) == 0
    assert f"test accuracy {summary['test/acc']:.4f}" in capsys.readouterr().out


def test_checkpoints_are_written_by_the_atomic_writer(tmp_path, monkeypatch):
    from pynodeta.train import checkpoint_io

    written = []
    original = checkpoint_io.atomic_torch_save
    def recording_save(obj, path):
        written.append(path)
        original(obj, path)

    monkeypatch.setattr(checkpoint_io, "atomic_torch_save", recording_save)
    assert main(["fit", "--config", _write_config(tmp_path)]) == 0
    assert len(written) == 1 and str(written[0]).endswith(".ckpt")


def test_print_config_resolves_defaults(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", _write_config(tmp_path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["optim"]["init_args"]["tabn_max_norm"] == 1.0


def test_config_typo_is_rejected_before_training(tmp_path, capsys):
    def typo(config):
        config["trainer"]["max_epoch"] = 3

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", _write_config(tmp_path, typo)])
    assert exit_info.value.code == 2
    assert "max_epoch" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unknown_norm_kind_is_a_clear_error(tmp_path, capsys):
    def bad_norm(config):
        config["model"]["init_args"]["model"]["init_args"]["norm"] = "tabnn"

    assert main(["fit", "--config", _write_config(tmp_path, bad_norm)]) == 2
    assert "pynodeta: error: unknown norm kind 'tabnn'; valid kinds:" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unknown_preset_option_is_rejected(tmp_path, capsys):
    def bad_option(config):
        config["model"]["init_args"]["optim"]["init_args"] = {"learning_rate": 0.1}

    with pytest.raises(SystemExit):
        main(["fit", "--config", _write_config(tmp_path, bad_option)])
    assert "learning_rate" in capsys.readouterr().err


def test_missing_data_directory_is_reported_before_training(tmp_path, capsys):
    def cifar(config):
        config["data"] = {"class_path": "pynodeta.data.CIFAR10DataModule",
                          "init_args": {"data_dir": str(tmp_path / "nowhere")}}

    assert main(["fit", "--config", _write_config(tmp_path, cifar)]) == 2
    err = capsys.readouterr().err
    assert "pynodeta: error:" in err and "cifar-10-batches-py" in err and "data_dir" in err
    assert not (tmp_path / "runs").exists()


def test_unknown_shipped_config_name_lists_the_shipped_ones(capsys):
    assert main(["fit", "--config", "digits_tabm"]) == 2
    err = capsys.readouterr().err
    assert "no shipped config of that name" in err and "digits_tabn" in err


def test_shipped_configs_include_the_main_job_and_the_paper_rows():
    names = set(shipped_configs())
    assert "digits_tabn" in names
    assert {"seed001_cifar10_gn", "seed001_cifar10_bn", "seed001_cifar10_gn_positional",
            "tabn_unet_cifar10"} <= names


def test_main_job_config_runs_one_batch_by_name(tmp_path, capsys):
    argv = ["fit", "--config", "digits_tabn", "--trainer.max_epochs", "1", "--trainer.limit_train_batches",
            "0.05", "--trainer.limit_val_batches", "0.5", "--trainer.limit_test_batches", "0.5",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main(argv) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("pynodeta summary:")]
    assert len(line) == 1 and "test accuracy" in line[0] and "train backward" in line[0]
    run = tmp_path / "digits_tabn" / "version_0"
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "last.ckpt").exists()


def test_unknown_solver_method_is_a_clear_error(tmp_path, capsys):
    argv = ["fit", "--config", "digits_tabn", "--model.init_args.model.init_args.solver.method", "dopri6",
            "--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main(argv) == 2
    assert "pynodeta: error: unknown method 'dopri6'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_unknown_dataset_class_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "digits_tabn", "--data", "pynodeta.data.CIFAR11DataModule"])
    assert exit_info.value.code == 2
    assert "has no attribute 'CIFAR11DataModule'" in capsys.readouterr().err
