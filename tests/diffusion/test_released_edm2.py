"""Released NVlabs/edm2 pickles: read as data (their embedded source never runs) and mapped onto EDM2Precond.

The pickles here are written in the format of NVlabs' ``torch_utils.persistence`` (a call to
``_reconstruct_persistent_obj(meta)`` per network object, ``meta`` holding the class name, the module's
source text and the object's ``__dict__``) around networks built by pynodeta, whose source text would
write a marker file if anything executed it. ``test_against_nvlabs_code`` compares with NVlabs' own
networks_edm2.py when ``PYNODETA_NVLABS_EDM2`` names a checkout of github.com/NVlabs/edm2.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import types

import pytest
import torch
from torch import nn

from pynodeta.data.safe_pickle import RefusedPickleGlobal
from pynodeta.diffusion import EDM2Precond
from pynodeta.diffusion.nvlabs_pickle import load_nvlabs_pickle
from pynodeta.diffusion.released_edm2 import load_released_edm2
from pynodeta.models.diffusion import EDM2Block, EDM2UNet
from pynodeta.nn.mp import MPConv, MPFourier

NVLABS_NAMES = {EDM2Precond: "Precond", EDM2UNet: "UNet", EDM2Block: "Block", MPConv: "MPConv",
                MPFourier: "MPFourier"}


def _executing_persistence(monkeypatch, marker):
    """A stand-in for ``torch_utils.persistence`` that does what NVlabs' does on load: exec the module source."""
    module = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        exec(meta["module_src"], {"MARKER": str(marker)})  # noqa: S102 - what plain pickle.load of such a file does
        raise AssertionError("unreachable: the source raises")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)
    return _reconstruct_persistent_obj


class _Persistent:
    """Pickles as NVlabs' persistent_class.__reduce__ does: (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, reconstruct, meta):
        self.reconstruct, self.meta = reconstruct, meta

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


def _as_persistent(module: nn.Module, reconstruct, source: str, init_kwargs: dict | None = None):
    state = dict(module.__dict__)
    children = {}
    for name, child in module._modules.items():
        if isinstance(child, nn.ModuleDict):  # NVlabs' ModuleDicts are torch's, holding persistent blocks
            plain = nn.ModuleDict()
            plain._modules = {k: _as_persistent(v, reconstruct, source) for k, v in child._modules.items()}
            children[name] = plain
        else:
            children[{"net": "unet"}.get(name, name)] = None if child is None else _as_persistent(child, reconstruct,
                                                                                                source)
    state["_modules"] = children
    state["_init_args"], state["_init_kwargs"] = (), dict(init_kwargs or {})
    meta = dict(type="class", version=6, module_src=source, class_name=NVLABS_NAMES[type(module)], state=state)
    return _Persistent(reconstruct, meta)


def _network(label_dim: int, channels: int = 3) -> tuple[EDM2Precond, dict]:
    kwargs = dict(img_resolution=8, img_channels=channels, label_dim=label_dim, model_channels=16,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], channels_per_head=16)
    torch.manual_seed(0)
    unet = EDM2UNet(**{**kwargs, "channel_mult": (1, 2), "attn_resolutions": (4,)})
    precond = EDM2Precond(unet, sigma_data=0.5, logvar_channels=8)
    with torch.no_grad():
        for parameter in precond.parameters():  # gains start at 0: random values make every path count
            parameter.normal_()
    return precond.eval(), {**kwargs, "use_fp16": True, "sigma_data": 0.5, "logvar_channels": 8}


def _pickle_bytes(monkeypatch, tmp_path, network, init_kwargs, half=True) -> tuple[bytes, object]:
    marker = tmp_path / "executed"
    source = "open(MARKER, 'w').write('ran')\nraise RuntimeError('the pickled source was executed')\n"
    reconstruct = _executing_persistence(monkeypatch, marker)
    if half:  # NVlabs stores the ema network in float16
        network = _copy_half(network)
    content = {"ema": _as_persistent(network, reconstruct, source, init_kwargs), "loss_fn": None}
    return pickle.dumps(content), marker


def _copy_half(network):
    import copy

    return copy.deepcopy(network).half()


@pytest.mark.parametrize("label_dim", [0, 5])
def test_pickle_maps_onto_edm2precond_without_running_its_source(monkeypatch, tmp_path, label_dim):
    network, init_kwargs = _network(label_dim)
    data, marker = _pickle_bytes(monkeypatch, tmp_path, network, init_kwargs, half=False)
    with pytest.raises(RuntimeError, match="executed"):  # the format is faithful: plain pickle runs the source
        pickle.loads(data)
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "edm2-img8-test.pkl"
    path.write_bytes(data)
    released = load_released_edm2(path)
    assert not marker.exists()
    assert released.use_fp16 and released.image_shape == (3, 8, 8)
    x = torch.randn(3, 3, 8, 8)
    sigma = torch.tensor([0.01, 1.0, 40.0])
    labels = torch.eye(label_dim)[[0, 2, 4]] if label_dim else None
    with torch.no_grad():
        expected, expected_logvar = network(x, sigma, labels, return_logvar=True)
        got, got_logvar = released.denoiser(x, sigma, labels, return_logvar=True)
    assert torch.equal(got, expected) and torch.equal(got_logvar, expected_logvar)


def test_float16_weights_are_read_as_float32(monkeypatch, tmp_path):
    network, init_kwargs = _network(0)
    data, marker = _pickle_bytes(monkeypatch, tmp_path, network, init_kwargs, half=True)
    path = tmp_path / "half.pkl"
    path.write_bytes(data)
    released = load_released_edm2(path)
    assert not marker.exists()
    assert all(p.dtype == torch.float32 for p in released.denoiser.parameters())
    rounded = _copy_half(network).float()
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        assert torch.equal(released.denoiser(x, sigma), rounded(x, sigma))


def test_unknown_globals_are_refused(tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps({"ema": (os.system, (f"touch {marker}",))})
    with pytest.raises(RefusedPickleGlobal, match="system"):
        load_nvlabs_pickle(io.BytesIO(evil))

    class Runs:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w')",))

    with pytest.raises(RefusedPickleGlobal, match="builtins.exec"):
        load_nvlabs_pickle(io.BytesIO(pickle.dumps({"ema": Runs()})))
    assert not marker.exists()


def test_a_tensor_without_a_place_is_refused(monkeypatch, tmp_path):
    network, init_kwargs = _network(0)
    network.net.extra = MPConv(2, 2, kernel=())  # not part of EDM2UNet's layout
    data, marker = _pickle_bytes(monkeypatch, tmp_path, network, init_kwargs)
    (tmp_path / "x.pkl").write_bytes(data)
    with pytest.raises(ValueError, match="net.extra.weight has no place"):
        load_released_edm2(tmp_path / "x.pkl")


def test_a_missing_tensor_and_an_unknown_argument_are_refused(monkeypatch, tmp_path):
    network, init_kwargs = _network(0)
    del network.net.enc["8x8_block0"].conv_res1
    data, _ = _pickle_bytes(monkeypatch, tmp_path, network, init_kwargs)
    (tmp_path / "x.pkl").write_bytes(data)
    with pytest.raises(ValueError, match="net.enc.8x8_block0.conv_res1.weight is not in the pickle"):
        load_released_edm2(tmp_path / "x.pkl")
    network, init_kwargs = _network(0)
    data, _ = _pickle_bytes(monkeypatch, tmp_path, network, {**init_kwargs, "fancy_option": 3})
    (tmp_path / "y.pkl").write_bytes(data)
    with pytest.raises(ValueError, match="'fancy_option'"):
        load_released_edm2(tmp_path / "y.pkl")


def test_a_file_without_an_ema_network_is_refused(tmp_path):
    (tmp_path / "z.pkl").write_bytes(pickle.dumps({"net": None}))
    with pytest.raises(ValueError, match="'ema' network"):
        load_released_edm2(tmp_path / "z.pkl")


NVLABS = os.environ.get("PYNODETA_NVLABS_EDM2")


@pytest.mark.skipif(not NVLABS, reason="set PYNODETA_NVLABS_EDM2 to a checkout of github.com/NVlabs/edm2")
@pytest.mark.parametrize("label_dim, channels", [(0, 3), (10, 4)])
def test_against_nvlabs_code(monkeypatch, tmp_path, label_dim, channels):
    """A network built and pickled by NVlabs' own code gives the same denoised images through pynodeta."""
    monkeypatch.syspath_prepend(NVLABS)
    from training import networks_edm2  # noqa: PLC0415 - NVlabs' code, only where the user points to it

    torch.manual_seed(1)
    net = networks_edm2.Precond(img_resolution=16, img_channels=channels, label_dim=label_dim, model_channels=32,
                                channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[8], channels_per_head=32)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_()
    path = tmp_path / "nvlabs.pkl"
    with open(path, "wb") as file:
        pickle.dump({"ema": net.eval()}, file)
    released = load_released_edm2(path)
    x = torch.randn(4, channels, 16, 16)
    sigma = torch.tensor([0.002, 0.3, 5.0, 80.0])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 7, 9]), label_dim).float() if label_dim else None
    with torch.no_grad():
        difference = (released.denoiser(x, sigma, labels) - net(x, sigma, labels)).abs().max().item()
    assert difference <= 1e-5


@pytest.mark.parametrize("channels", [3, 4])
def test_sample_command_draws_from_a_released_pickle(monkeypatch, tmp_path, channels):
    import numpy as np

    from pynodeta.train.sample_cli import sample_main

    network, init_kwargs = _network(0, channels)
    data, marker = _pickle_bytes(monkeypatch, tmp_path, network, init_kwargs)
    path = tmp_path / "edm2-img8-0000123-0.100.pkl"
    path.write_bytes(data)
    common = ["--checkpoint", str(path), "--num", "3", "--steps", "3", "--num-threads", "1"]
    grid = tmp_path / "grid.png"
    status = sample_main(common + ["--out", str(grid), "--save-tensor", str(tmp_path / "x.npy")])
    assert status == (0 if channels == 3 else 2)
    assert grid.exists() == (channels == 3) and (tmp_path / "x.npy").exists() == (channels == 3)
    assert sample_main(common + ["--out", "none", "--save-tensor", str(tmp_path / "latents.npy")]) == 0
    drawn = np.load(tmp_path / "latents.npy")
    assert drawn.shape == (3, channels, 8, 8) and np.isfinite(drawn).all() and drawn.std() > 0
    assert not marker.exists()


def test_sample_command_refuses_a_grid_of_latents_with_the_fix(monkeypatch, tmp_path, capsys):
    from pynodeta.train.sample_cli import sample_main

    network, init_kwargs = _network(0, 4)
    data, _ = _pickle_bytes(monkeypatch, tmp_path, network, init_kwargs)
    (tmp_path / "lat.pkl").write_bytes(data)
    assert sample_main(["--checkpoint", str(tmp_path / "lat.pkl"), "--out", str(tmp_path / "g.png")]) == 2
    message = capsys.readouterr().err
    assert "4-channel" in message and "--vae" in message and "--out none" in message


def test_phema_checkpoint_option_refuses_a_released_pickle(tmp_path):
    from pynodeta.train.run_loader import read_run_checkpoint
    from pynodeta.train.safe_load import CheckpointError

    (tmp_path / "edm2.pkl").write_bytes(pickle.dumps({"ema": None}))
    with pytest.raises(CheckpointError, match="NVlabs/edm2 network pickle"):
        read_run_checkpoint(tmp_path / "edm2.pkl")


def test_evaluate_command_scores_a_released_pickle_against_saved_statistics(monkeypatch, tmp_path, capsys):
    import json
    import math

    import numpy as np

    from pynodeta.metrics import save_reference_statistics
    from pynodeta.train.evaluate_cli import evaluate_main

    paths = {}
    for channels in (1, 3):
        network, init_kwargs = _network(0, channels)
        data, marker = _pickle_bytes(monkeypatch, tmp_path, network, init_kwargs)
        paths[channels] = tmp_path / f"edm2-img8-{channels}-0000123-0.100.pkl"
        paths[channels].write_bytes(data)
    stats = tmp_path / "ref.npz"  # 1×8×8 images are scored in the digits features: 64 of them
    save_reference_statistics(stats, np.zeros(64), np.eye(64))
    common = ["--num", "4", "--steps", "2", "--num-threads", "1", "--out", str(tmp_path / "e.png")]
    assert evaluate_main(["--checkpoint", str(paths[1]), *common]) == 2  # no DataModule: no test images
    error = capsys.readouterr().err
    assert "no DataModule" in error and "pass --reference-stats" in error and "--config" not in error
    assert evaluate_main(["--checkpoint", str(paths[1]), *common, "--reference-stats", str(stats), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert math.isfinite(result["fd"]) and result["fd"] > 0 and result["bpd"] is None and result["fd_floor"] is None
    assert evaluate_main(["--checkpoint", str(paths[3]), *common, "--reference-stats", str(stats)]) == 2
    assert "pass --inception-weights or --dinov2-weights" in capsys.readouterr().err  # 3-channel: no digits features
    assert not marker.exists()
