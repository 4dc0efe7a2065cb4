"""``pynodeta encode``: image folders → VAE latent shards, resumable, atomic; ``LatentDataModule`` reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pynodeta.cli import main
from pynodeta.data import LatentDataModule, encode_image_folder
from pynodeta.data.image_folder import ImageFolder, read_cropped_image
from pynodeta.data.latent_encoding import EncodingMismatchError
from pynodeta.data.latent_shards import LatentShards
from pynodeta.diffusion.latents import EDM2_SD_VAE_SCALING, draw_latents

from .latent_fixtures import save_tiny_vae, write_jpeg_folders

pytest.importorskip("diffusers")


@pytest.fixture
def encoded(tmp_path):
    vae = save_tiny_vae(tmp_path / "vae")
    data = write_jpeg_folders(tmp_path / "train", classes=("n02", "n01", "b03"), per_class=3)
    result = encode_image_folder(data, tmp_path / "vae", tmp_path / "latents", resolution=16, shard_size=4,
                                 batch_size=3)
    return vae, data, tmp_path / "latents", result


def test_shards_hold_the_vae_posterior_of_the_cropped_images_and_the_sorted_folder_labels(encoded):
    vae, data, out, result = encoded
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and index["shards"] == [4, 4, 1] and index["latent_shape"] == [8, 8, 8]
    assert index["classes"] == ["b03", "n01", "n02"] and index["num_images"] == 9 and index["resolution"] == 16
    assert index["scaling"] == EDM2_SD_VAE_SCALING.to_dict() and index["vae"] == str((out.parent / "vae").resolve())
    assert (result["skipped"], result["encoded"]) == (0, 3)
    shards = LatentShards.open(out)
    assert shards.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    folder = ImageFolder.scan(data)
    pixels = torch.stack([read_cropped_image(p, 16) for p in folder.paths])
    with torch.no_grad():
        posterior = vae.encode(pixels.float() / 255).latent_dist
    expected = torch.cat([posterior.mean, posterior.std], dim=1).numpy()
    stored = np.stack([shards.raw(i) for i in range(9)])
    np.testing.assert_allclose(stored, expected, atol=1e-5, rtol=1e-5)


def test_a_rerun_skips_whole_shards_and_redoes_missing_truncated_or_half_written_ones(encoded, tmp_path, capsys):
    _, data, out, _ = encoded
    before = {p.name: p.read_bytes() for p in out.glob("*.npy")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    again = encode_image_folder(data, tmp_path / "vae", out, resolution=16, shard_size=4, batch_size=3)
    assert (again["skipped"], again["encoded"]) == (3, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")} == mtimes  # nothing rewritten

    # a kill mid-write leaves a temporary file and no final one; a bad copy leaves a truncated final file
    (out / "latents-00002.npy").rename(out / ".latents-00002.npy.k1ll3d.tmp")
    truncated = out / "latents-00001.npy"
    truncated.write_bytes(truncated.read_bytes()[:200])
    index = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps(index | {"complete": False}))
    with pytest.raises(ValueError, match="has not finished"):
        LatentShards.open(out)
    capsys.readouterr()
    resumed = encode_image_folder(data, tmp_path / "vae", out, resolution=16, shard_size=4, batch_size=3,
                                  disable=False)
    assert (resumed["skipped"], resumed["encoded"]) == (1, 2)
    assert "pynodeta encode (images)" in capsys.readouterr().err  # the bar counts the 4 + 1 images left

    assert not list(out.glob(".*.tmp"))  # the stale temporary file is cleaned up
    assert {p.name: p.read_bytes() for p in out.glob("*.npy")} == before
    assert json.loads((out / "index.json").read_text())["complete"]


def test_a_rerun_with_other_settings_is_refused(encoded, tmp_path):
    _, data, out, _ = encoded
    with pytest.raises(EncodingMismatchError, match="resolution"):
        encode_image_folder(data, tmp_path / "vae", out, resolution=32, shard_size=4)


def test_the_command_encodes_resumes_and_reports_bad_input(tmp_path, capsys):
    save_tiny_vae(tmp_path / "vae")
    data = write_jpeg_folders(tmp_path / "train", per_class=2)
    argv = ["encode", "--vae", str(tmp_path / "vae"), "--data", str(data), "--out", str(tmp_path / "lat"),
            "--resolution", "16", "--shard-size", "4", "--device", "cpu"]
    assert main(argv) == 0
    assert "6 images, 3 classes, latents 8x8x8 (mean and std) in 2 shards (0 already done, 2 encoded)" in \
        capsys.readouterr().out
    assert main(argv) == 0
    assert "(2 already done, 0 encoded)" in capsys.readouterr().out
    assert main([*argv[:1], "--vae", str(data), *argv[3:]]) == 2
    assert "not a saved diffusers AutoencoderKL" in capsys.readouterr().err
    assert main([*argv[:-4], "--shard-size", "0"]) == 2
    assert "--shard-size must be >= 1" in capsys.readouterr().err
    assert main([*argv[:-1], "meta"]) == 2  # a device nothing can be computed on: one line, not a traceback
    assert "--device 'meta': a meta tensor holds no values, so nothing can be computed on it; use cpu" in \
        capsys.readouterr().err


def test_the_datamodule_yields_scaled_posterior_samples_with_labels_and_edm2_xflip(encoded):
    _, _, out, _ = encoded
    data = LatentDataModule(out, batch_size=4, seed=3)
    data.setup("fit")
    assert data.sample_shape == (4, 8, 8) and data.num_classes == 3 and len(data.train_set) == 9
    raw, labels = next(iter(data.train_dataloader()))
    assert raw.shape == (4, 8, 8, 8) and labels.dtype == torch.int64
    shards = LatentShards.open(out)
    order = [int(np.flatnonzero([np.array_equal(shards.raw(i), r.numpy()) for i in range(9)])[0]) for r in raw]
    assert labels.tolist() == shards.labels[order].tolist()  # each latent with its own image's label
    x, same_labels = data.on_after_batch_transfer((raw, labels), 0)  # outside a Trainer: a posterior sample
    expected = draw_latents(raw, EDM2_SD_VAE_SCALING, torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, expected)
    assert x.shape == (4, 4, 8, 8) and same_labels is labels
    torch.testing.assert_close(data.final_latents(raw, sample=False),
                               EDM2_SD_VAE_SCALING.scale_latents(raw[:, :4]))

    flipped = LatentDataModule(out, batch_size=4, xflip=True, val_size=3)
    flipped.setup("fit")
    assert len(flipped.train_set) == 2 * 6 and len(flipped.val_set) == 3
    for i in range(6):
        latents, label = flipped.train_set[i]
        mirrored, mirrored_label = flipped.train_set[i + 6]
        torch.testing.assert_close(mirrored, latents.flip(-1))  # mean and std, along the width
        assert label == mirrored_label
        assert not torch.equal(mirrored, latents)


def test_the_datamodule_refuses_a_folder_without_an_index(tmp_path):
    data = LatentDataModule(tmp_path)
    with pytest.raises(FileNotFoundError, match="pynodeta encode"):
        data.setup("fit")


def test_a_restored_datamodule_draws_the_posterior_samples_the_uninterrupted_one_would(encoded):
    _, _, out, _ = encoded
    first = LatentDataModule(out, batch_size=4, seed=1)
    first.setup("fit")
    raw, labels = next(iter(first.train_dataloader()))
    first.on_after_batch_transfer((raw, labels), 0)
    state = first.state_dict()
    expected, _ = first.on_after_batch_transfer((raw, labels), 0)
    resumed = LatentDataModule(out, batch_size=4, seed=1)
    resumed.load_state_dict(state)
    again, _ = resumed.on_after_batch_transfer((raw, labels), 0)
    torch.testing.assert_close(again, expected)
    fresh, _ = LatentDataModule(out, batch_size=4, seed=1).on_after_batch_transfer((raw, labels), 0)
    assert not torch.equal(fresh, expected)  # the second draw, not the first again
