"""Post-hoc EMA from NVlabs/edm2 snapshot pickles: reconstruction, `pynodeta phema` and `pynodeta sample` on it.

Snapshots are written in NVlabs' persistence format around pynodeta networks (see test_released_edm2);
``test_against_nvlabs_reconstruct_phema`` runs NVlabs' own reconstruct_phema.py on pickles of their
networks when ``PYNODETA_NVLABS_EDM2`` names a checkout of github.com/NVlabs/edm2.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from pynodeta.diffusion.released_phema import RELEASED_FORMAT, reconstruct_nvlabs_phema, released_from_payload

from .test_released_edm2 import _as_persistent, _copy_half, _executing_persistence, _network

PROFILES = [(1024, 0.05), (1024, 0.10), (2048, 0.05), (2048, 0.10), (3072, 0.05), (3072, 0.10)]


def _snapshots(monkeypatch, tmp_path):
    """Six snapshots of one architecture, each with its own weights; returns the networks by (kimg, σ_rel)."""
    marker = tmp_path / "executed"
    reconstruct = _executing_persistence(monkeypatch, marker)
    folder = tmp_path / "run"
    folder.mkdir()
    networks = {}
    for index, (kimg, sigma_rel) in enumerate(PROFILES):
        network, init_kwargs = _network(0)
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.add_(index)  # distinct weights per snapshot
        network = _copy_half(network)  # NVlabs stores snapshots in float16
        networks[kimg, sigma_rel] = network
        content = {"ema": _as_persistent(network, reconstruct, "open(MARKER, 'w')\n", init_kwargs)}
        (folder / f"network-snapshot-{kimg:07d}-{sigma_rel:.3f}.pkl").write_bytes(pickle.dumps(content))
    return folder, networks, marker


def test_a_stored_profile_is_reconstructed_as_itself(monkeypatch, tmp_path):
    """The target profile lies in the span of the stored ones: least squares returns exactly that snapshot."""
    folder, networks, marker = _snapshots(monkeypatch, tmp_path)
    payload = reconstruct_nvlabs_phema(folder, 0.10, kimg=2048)
    assert not marker.exists() and payload["format"] == RELEASED_FORMAT
    released = released_from_payload(payload, "phema.pt")
    expected = networks[2048, 0.10].float()
    for (name, got), (_, want) in zip(released.denoiser.state_dict().items(), expected.state_dict().items()):
        assert torch.allclose(got, want, atol=1e-4 * (1 + want.abs().max())), name


def test_phema_command_then_sample_command(monkeypatch, tmp_path, capsys):
    import numpy as np

    from pynodeta.ema.cli import main as phema_main
    from pynodeta.train.sample_cli import sample_main

    folder, networks, marker = _snapshots(monkeypatch, tmp_path)
    out = tmp_path / "phema.pt"
    assert phema_main(["--snapshots", str(folder), "--sigma-rel", "0.07", "--out", str(out)]) == 0
    payload = torch.load(out, weights_only=True)
    assert payload["posthoc"] == {"sigma_rel": 0.07, "step": "3072 kimg"}
    # between the stored widths: a combination of the snapshots, not any one of them
    name = "unet.out_gain"
    values = [float(n.state_dict()["net.out_gain"]) for n in networks.values()]
    assert min(values) - 1 < float(payload["tensors"][name]) < max(values) + 1
    assert all(abs(float(payload["tensors"][name]) - v) > 1e-3 for v in values)
    assert sample_main(["--checkpoint", str(out), "--num", "2", "--steps", "2", "--out", str(tmp_path / "g.png"),
                        "--save-tensor", str(tmp_path / "x.npy"), "--num-threads", "1"]) == 0
    assert "sigma_rel=0.07 (post hoc, step 3072 kimg)" in capsys.readouterr().out
    assert np.load(tmp_path / "x.npy").shape == (2, 3, 8, 8)
    assert phema_main(["--snapshots", str(folder), "--sigma-rel", "0.07", "--out", str(out), "--step", "5"]) == 2
    assert "no snapshot at 5 kimg" in capsys.readouterr().err
    # a second run's snapshots in the same folder: --prefix picks one
    for path in list(folder.glob("network-snapshot-*.pkl")):
        (folder / path.name.replace("network-snapshot", "other-run")).write_bytes(path.read_bytes())
    assert phema_main(["--snapshots", str(folder), "--sigma-rel", "0.07", "--out", str(out)]) == 2
    assert "several prefixes ['network-snapshot', 'other-run']; pick one (--prefix)" in capsys.readouterr().err
    again = tmp_path / "again.pt"
    assert phema_main(["--snapshots", str(folder), "--sigma-rel", "0.07", "--out", str(again),
                       "--prefix", "other-run"]) == 0
    assert torch.equal(torch.load(again, weights_only=True)["tensors"][name], payload["tensors"][name])
    assert not marker.exists()


NVLABS = os.environ.get("PYNODETA_NVLABS_EDM2")


@pytest.mark.skipif(not NVLABS, reason="set PYNODETA_NVLABS_EDM2 to a checkout of github.com/NVlabs/edm2")
def test_against_nvlabs_reconstruct_phema(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(NVLABS)
    import reconstruct_phema  # noqa: PLC0415 - NVlabs' code, only where the user points to it
    from training import networks_edm2  # noqa: PLC0415

    folder = tmp_path / "run"
    folder.mkdir()
    for index, (kimg, sigma_rel) in enumerate(PROFILES):
        torch.manual_seed(index)
        net = networks_edm2.Precond(img_resolution=8, img_channels=3, label_dim=0, model_channels=16,
                                    channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], channels_per_head=16)
        with open(folder / f"network-snapshot-{kimg:07d}-{sigma_rel:.3f}.pkl", "wb") as file:
            pickle.dump({"ema": net.eval().requires_grad_(False).to(torch.float16)}, file)  # as training_loop.py
    pickles = reconstruct_phema.list_input_pickles(str(folder))
    steps = list(reconstruct_phema.reconstruct_phema(pickles, out_std=[0.07], verbose=False))
    theirs = steps[-1].out[0].net.to(torch.float32)  # NVlabs rounds its result to float16 before saving
    ours = released_from_payload(reconstruct_nvlabs_phema(folder, 0.07), "x").denoiser
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.1, 2.0])
    with torch.no_grad():
        difference = (ours(x, sigma) - theirs(x, sigma)).abs().max().item()
    assert difference < 1e-2  # float16 rounding of NVlabs' result (ours stays float32)
