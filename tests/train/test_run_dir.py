"""Run folders of the ``pynodeta`` command: resume in place, ``--ckpt_path last``, the lock against
a second live run, cleaning a killed run's temporary files, and bad checkpoint files (exit 2)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pynodeta._atomic import temporary_file_beside
from pynodeta.cli import main
from pynodeta.train import run_dir as run_dir_module
from pynodeta.train.run_dir import RunDirLock

from .test_cli import _write_config  # the tiny digits fit


def _few_batches(config):
    # fractions: jsonargparse reads an integer 1 here as the float 1.0, i.e. all batches
    config["trainer"].update(limit_train_batches=0.05, limit_val_batches=0.2, limit_test_batches=0.2)


def _config(tmp_path, save_last=False):
    return _write_config(tmp_path, lambda config: (_few_batches(config), save_last and _with_last_checkpoint(config)))


def _with_last_checkpoint(config):
    config["trainer"]["callbacks"] = [{"class_path": "pynodeta.train.ModelCheckpoint",
                                       "init_args": {"monitor": "val/acc", "mode": "max", "save_last": True}}]


def _epochs_logged(run):
    with open(run / "metrics.csv") as f:
        return sorted({int(row["epoch"]) for row in csv.DictReader(f) if row.get("train/loss")})


@pytest.fixture
def first_run(tmp_path):
    config = _config(tmp_path, save_last=True)
    assert main(["fit", "--config", config]) == 0
    return config, tmp_path / "runs" / "lightning_logs"


def test_resume_continues_in_the_same_run_folder(first_run, recwarn):
    config, root = first_run
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    before = torch.load(last, weights_only=True)
    assert before["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 1
    assert main(["fit", "--config", config, "--ckpt_path", str(last), "--trainer.max_epochs", "2"]) == 0
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["version_0"]  # no version_1
    assert _epochs_logged(root / "version_0") == [0, 1]   # one metrics.csv holds both epochs
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]  # best-k tracking kept
    (state,) = torch.load(last, weights_only=True)["callbacks"].values()
    assert state["dirpath"] == next(iter(before["callbacks"].values()))["dirpath"]
    assert torch.load(last, weights_only=True)["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 2


def test_ckpt_path_last_resumes_the_newest_run(first_run):
    config, root = first_run
    assert main(["fit", "--config", config, "--ckpt_path", "last", "--trainer.max_epochs", "2"]) == 0
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["version_0"]
    assert _epochs_logged(root / "version_0") == [0, 1]


def test_resuming_under_a_config_of_other_classes_is_refused_and_the_run_is_left_alone(first_run, capsys):
    config, root = first_run
    run = root / "version_0"
    last, saved = run / "checkpoints" / "last.ckpt", (run / "config.yaml").read_text()
    before = last.read_bytes()
    other = ["--model.init_args.optim", "pynodeta.train.AdamWPreset"]
    assert main(["fit", "--config", config, *other, "--ckpt_path", str(last), "--trainer.max_epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "whose config.yaml builds other classes than this command's config " \
           "(model.optim: AdamWPreset here, TABNAdamW in the run)" in err
    assert f"--config {str(run / 'config.yaml')!r}" in err and "Traceback" not in err
    assert (run / "config.yaml").read_text() == saved and last.read_bytes() == before  # the run is untouched
    # the run's own config.yaml resumes it
    own = ["--config", str(run / "config.yaml")]
    assert main(["fit", *own, "--ckpt_path", str(last), "--trainer.max_epochs", "2"]) == 0


def test_resuming_weights_of_other_shapes_is_one_line_naming_the_first_mismatch(first_run, capsys):
    config, root = first_run
    last = root / "version_0" / "checkpoints" / "last.ckpt"
    wider = ["--model.init_args.model.init_args.width", "16"]
    assert main(["fit", "--config", config, *wider, "--ckpt_path", str(last), "--trainer.max_epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pynodeta: error: the weights in --ckpt_path {str(last)!r} do not fit the model this "
                          f"config builds (size mismatch for ") and "Traceback" not in err


def test_ckpt_path_last_without_a_checkpoint_is_refused(tmp_path, capsys):
    assert main(["fit", "--config", _config(tmp_path), "--ckpt_path", "last"]) == 2
    err = capsys.readouterr().err
    assert "pynodeta: error: --ckpt_path last: no last.ckpt under" in err and "from scratch" in err
    assert not (tmp_path / "runs").exists()


def test_best_without_a_fit_in_this_process_is_refused(tmp_path, capsys):
    assert main(["test", "--config", _config(tmp_path), "--ckpt_path", "best"]) == 2
    assert "pass the checkpoint file's path" in capsys.readouterr().err


@pytest.mark.parametrize(("subcommand", "content"), [("fit", "missing"), ("fit", "empty"), ("fit", "garbage"),
                                                    ("fit", "truncated"), ("validate", "truncated"),
                                                    ("test", "garbage")])
def test_a_bad_checkpoint_file_exits_2_before_anything_runs(tmp_path, capsys, subcommand, content):
    path = tmp_path / "model.ckpt"
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, good)
    written = {"empty": b"", "garbage": b"not a checkpoint " * 20, "truncated": good.read_bytes()[:300]}
    if content in written:
        path.write_bytes(written[content])
    assert main([subcommand, "--config", _config(tmp_path), "--ckpt_path", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pynodeta: error:") and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_run_folder_held_by_a_live_run_is_refused(tmp_path, capsys):
    config = _config(tmp_path)
    version = ["--trainer.logger.init_args.version", "shared"]
    run = tmp_path / "runs" / "lightning_logs" / "shared"
    # another live process holding the lock; run_dir.py alone (stdlib only) starts in milliseconds
    script = ("import importlib.util, sys, time; "
              f"spec = importlib.util.spec_from_file_location('run_dir', {str(run_dir_module.__file__)!r}); "
              "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
              f"module.RunDirLock({str(run)!r}).acquire(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["fit", "--config", config, *version]) == 2
        err = capsys.readouterr().err
        assert f"pynodeta: error: run directory {str(run)!r} is in use by another live run (pid {holder.pid}" in err
        assert not (run / "metrics.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    # its process is gone: the stale lock (its pid still in the file) is taken over
    assert (run.parent / "shared.lock").read_text().strip() == str(holder.pid)
    assert main(["fit", "--config", config, *version]) == 0
    assert (run / "metrics.csv").exists() and not (run.parent / "shared.lock").exists()


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    first = RunDirLock(tmp_path / "run")
    first.acquire()
    with pytest.raises(Exception, match=f"in use by another live run \\(pid {os.getpid()}"):
        RunDirLock(tmp_path / "run").acquire()
    first.release()
    second = RunDirLock(tmp_path / "run")
    second.acquire()
    second.release()


def test_a_killed_runs_temporary_checkpoint_files_are_removed_at_start(tmp_path):
    config = _config(tmp_path, save_last=True)
    version = ["--trainer.logger.init_args.version", "v"]
    assert main(["fit", "--config", config, *version]) == 0
    checkpoints = tmp_path / "runs" / "lightning_logs" / "v" / "checkpoints"
    leftover = checkpoints / ".last.ckpt.3fa9c01b.tmp"  # the name of atomic_torch_save's temporary file
    leftover.write_bytes(b"half a checkpoint")
    unrelated = checkpoints / "notes.tmp"
    unrelated.write_text("not ours")
    resume = ["--ckpt_path", str(checkpoints / "last.ckpt"), "--trainer.max_epochs", "2"]
    assert main(["fit", "--config", config, *version, *resume]) == 0
    assert not leftover.exists() and unrelated.exists()


def test_a_killed_runs_temporary_snapshot_files_are_removed_with_the_checkpoint_ones(tmp_path):
    """A run killed while a power-EMA snapshot was written left .phema-*.tmp files that nothing removed."""
    run = tmp_path / "v"
    written = []
    for folder, name in (("checkpoints", "last.ckpt"), ("phema", "phema-0000000200.pt")):
        (run / folder).mkdir(parents=True)
        (run / folder / name).write_bytes(b"a finished file")
        # the temporary name pynodeta._atomic gives, as a kill mid-write leaves it
        handle, temporary = temporary_file_beside(run / folder / name)
        os.close(handle)
        written.append(Path(temporary))
    (run / "phema" / "notes.tmp").write_text("not ours")
    assert sorted(run_dir_module.remove_stale_run_tmp_files(run)) == sorted(written)
    assert not any(path.exists() for path in written)
    assert (run / "phema" / "phema-0000000200.pt").exists() and (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "phema" / "notes.tmp").exists()
    assert run_dir_module.remove_stale_run_tmp_files(tmp_path / "no-such-run") == []


def test_a_new_fit_into_another_runs_folder_is_refused(tmp_path, capsys):
    config = _config(tmp_path, save_last=True)
    version = ["--trainer.logger.init_args.version", "x"]
    assert main(["fit", "--config", config, *version]) == 0
    run = tmp_path / "runs" / "lightning_logs" / "x"
    metrics = (run / "metrics.csv").read_text()
    capsys.readouterr()
    assert main(["fit", "--config", config, *version]) == 2  # a second, unrelated run into the same folder
    err = capsys.readouterr().err
    assert err.startswith(f"pynodeta: error: run directory {str(run)!r} already holds another run's files")
    assert "--trainer.logger.init_args.version <new name>" in err and "--ckpt_path" in err and "Traceback" not in err
    assert (run / "metrics.csv").read_text() == metrics and not (run.parent / "x.lock").exists()
    # resuming that run in its own folder, with the same explicit version, is what the folder is for
    last = run / "checkpoints" / "last.ckpt"
    assert main(["fit", "--config", config, *version, "--ckpt_path", str(last), "--trainer.max_epochs", "2"]) == 0
    assert _epochs_logged(run) == [0, 1]


def test_checkpoint_hyperparameters_may_not_name_foreign_classes(tmp_path, capsys):
    # LightningCLI rebuilds the model from these class paths; only modules the config names pass.
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "subprocess.Popen",
                                                       "args": ["touch", str(tmp_path / "marker")]}}, path)
    assert main(["test", "--config", _config(tmp_path), "--ckpt_path", str(path)]) == 2
    assert "'subprocess.Popen', which is outside the allowed modules" in capsys.readouterr().err
    assert not (tmp_path / "marker").exists()


def test_a_corrupt_dataset_file_is_a_clear_error(tmp_path, capsys):
    from tests.data.test_data_image_files import write_cifar10

    write_cifar10(tmp_path / "data")
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:100])
    def cifar(config):
        config["data"] = {"class_path": "pynodeta.data.CIFAR10DataModule",
                          "init_args": {"data_dir": str(tmp_path / "data"), "val_size": 5}}

    assert main(["fit", "--config", _write_config(tmp_path, cifar)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pynodeta: error:") and str(batch) in err and "truncated" in err


def test_atomic_write_text_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    from pynodeta import _atomic

    target = tmp_path / "summary.json"
    _atomic.atomic_write_text(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(_atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        _atomic.atomic_write_text(target, '{"a": 2}')
    assert target.read_text() == '{"a": 1}'  # the old file is intact, and no temporary is left behind
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077], ids=oct)
def test_an_atomic_write_gets_the_permissions_a_plain_open_gives(tmp_path, umask):
    from pynodeta import _atomic

    previous = os.umask(umask)
    try:
        _atomic.atomic_write_text(tmp_path / "summary.json", "{}")
        _atomic.atomic_torch_save({"step": 1}, tmp_path / "last.ckpt")
        with open(tmp_path / "metrics.csv", "w"):
            pass
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "metrics.csv") == 0o666 & ~umask
    assert _mode(tmp_path / "summary.json") == _mode(tmp_path / "last.ckpt") == 0o666 & ~umask


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("existing", [0o644, 0o600, 0o640], ids=oct)
def test_an_atomic_write_over_a_file_keeps_its_permissions(tmp_path, existing):
    from pynodeta import _atomic

    target = tmp_path / "last.ckpt"
    target.write_bytes(b"an older checkpoint")
    target.chmod(existing)
    previous = os.umask(0o077)  # a umask that would give 0600: the existing file's mode wins
    try:
        _atomic.atomic_torch_save({"step": 2}, target)
    finally:
        os.umask(previous)
    assert _mode(target) == existing and torch.load(target)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
