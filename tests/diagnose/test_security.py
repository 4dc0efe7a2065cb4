"""``pynodeta diagnose`` on hostile and broken checkpoints: no code from the file runs unless the
user opts in with --unsafe-load, only allowed Lightning classes are built, bad files exit 2."""

import builtins

import pytest
import torch

from pynodeta.cli import main as pynodeta_main

from .tiny_models import TinyClassifierModule


class _WritesMarker:
    """Unpickling this runs ``exec``: what a hostile checkpoint would do with os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _diagnose(*argv):
    return pynodeta_main(["diagnose", *map(str, argv)])


@pytest.mark.parametrize("wrap", [lambda payload: payload, lambda payload: {"model": payload, "state_dict": {}}])
def test_a_code_running_pickle_is_refused_without_unsafe_load(tmp_path, capsys, wrap):
    marker, path = tmp_path / "marker", tmp_path / "hostile.pt"
    torch.save(wrap(_WritesMarker(marker)), path)
    assert _diagnose("--checkpoint", path) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "pynodeta diagnose: error:" in err and "exec" in err and "--unsafe-load" in err
    assert _diagnose("--config", "digits_tabn", "--checkpoint", path) == 2  # the same with --config
    assert not marker.exists()


def test_unsafe_load_is_an_explicit_opt_in_with_a_warning(tmp_path, capsys):
    marker, path = tmp_path / "marker", tmp_path / "hostile.pt"
    torch.save(_WritesMarker(marker), path)
    assert _diagnose("--checkpoint", path, "--unsafe-load") == 2  # unpickled (code ran), then not a model
    assert marker.exists()
    assert "warning: --unsafe-load" in capsys.readouterr().err


def _plain_checkpoint(path, hyper_parameters, data=None):
    torch.manual_seed(0)
    checkpoint = {"state_dict": TinyClassifierModule("bn", "additive").state_dict(),
                  "pytorch-lightning_version": "2.6.0", "hyper_parameters": hyper_parameters}
    if data is not None:
        checkpoint["datamodule_hyper_parameters"] = data
    torch.save(checkpoint, path)
    return path


TINY_MODULE = {"_class_path": "tests.diagnose.tiny_models.TinyClassifierModule", "norm": "bn",
               "injection": "additive"}


@pytest.mark.parametrize(
    ("hyper_parameters", "data", "allow", "message"),
    [
        ({"_class_path": "subprocess.Popen", "args": ["touch", "{marker}"]}, None, [],
         "'subprocess.Popen', which is outside the allowed modules"),
        ({"_class_path": "subprocess.Popen", "args": ["touch", "{marker}"]}, None, ["subprocess"],
         "not a LightningModule subclass"),
        (TINY_MODULE, {"_class_path": "os.system", "command": "touch {marker}"}, ["tests.diagnose"],
         "'os.system', which is outside the allowed modules"),
        (TINY_MODULE, {"_class_path": "os.system", "command": "touch {marker}"}, ["tests.diagnose", "os"],
         "not a LightningDataModule subclass"),
        (TINY_MODULE, None, [], "--allow-module tests.diagnose.tiny_models"),
        ({**TINY_MODULE, "_instantiator": "os.system"}, None, ["tests.diagnose"], "instantiator 'os.system'"),
        ({"_class_path": "pynodeta.train.NODEClassifier",
          "model": {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", "{marker}"]}}}, None, [],
         "'subprocess.Popen', which is outside the allowed modules"),
    ],
)
def test_class_paths_outside_the_allowlist_or_not_lightning_classes_are_refused(
        tmp_path, capsys, hyper_parameters, data, allow, message):
    marker = tmp_path / "marker"
    def fill(tree):
        return eval(repr(tree).replace("{marker}", str(marker)))  # noqa: S307 - our own literal
    path = _plain_checkpoint(tmp_path / "plain.ckpt", fill(hyper_parameters), data and fill(data))
    allow_args = [a for module in allow for a in ("--allow-module", module)]
    assert _diagnose("--checkpoint", path, "--input-shape", "1", "8", "8", *allow_args) == 2
    assert message in capsys.readouterr().err
    assert not marker.exists()


def test_an_allowed_lightning_checkpoint_loads_safely(tmp_path, capsys):
    data = {"_class_path": "pynodeta.data.DigitsDataModule", "batch_size": 16}
    path = _plain_checkpoint(tmp_path / "ok.ckpt", TINY_MODULE, data)
    assert _diagnose("--checkpoint", path, "--allow-module", "tests.diagnose", "--json") == 1  # BN cancels time
    assert '"vanishing": true' in capsys.readouterr().out


@pytest.mark.parametrize("content", ["missing", "empty", "garbage", "truncated"])
@pytest.mark.parametrize("with_config", [False, True])
def test_a_missing_or_corrupt_checkpoint_exits_2_with_a_message(tmp_path, capsys, content, with_config):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": TinyClassifierModule().state_dict()}, tmp_path / "whole.ckpt")
    whole = (tmp_path / "whole.ckpt").read_bytes()
    written = {"empty": b"", "garbage": b"not a checkpoint " * 20, "truncated": whole[: len(whole) // 2]}
    if content in written:
        path.write_bytes(written[content])
    config = ["--config", "digits_tabn"] if with_config else []
    assert _diagnose(*config, "--checkpoint", path) == 2
    err = capsys.readouterr().err
    assert err.startswith("pynodeta diagnose: error:") and str(path) in err
    assert ("does not exist" if content == "missing" else "empty" if content == "empty" else "truncated") in err
