"""`pynodeta evaluate --write-reference-stats / --reference-stats`: statistics computed once, FD against them."""

import json

import numpy as np
import pytest
import torch

from pynodeta.cli import main
from pynodeta.data import DigitsDataModule
from pynodeta.metrics import DigitsFeatureExtractor, feature_statistics, save_reference_statistics

from .test_run_loader import _write_run


def _evaluate(checkpoint, tmp_path, capsys, *flags):
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "e.png"), "--json",
                 "--nll-images", "1", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def _digits(split: str):
    data = DigitsDataModule(batch_size=16, normalization="diffusion")
    data.setup("fit" if split == "train" else "test")
    dataset = data.train_set if split == "train" else data.test_set
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_written_statistics_are_the_training_images_mean_and_covariance(tmp_path, capsys):
    checkpoint = _write_run(tmp_path)
    path = tmp_path / "digits_train.npz"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--write-reference-stats", str(path)]) == 0
    assert "training images (64 features)" in capsys.readouterr().out
    with np.load(path) as saved:
        mu, sigma = feature_statistics(DigitsFeatureExtractor()(_digits("train")).double())
        np.testing.assert_allclose(saved["mu"], mu, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(saved["sigma"], sigma, rtol=1e-8, atol=1e-10)


def test_fd_against_saved_test_statistics_equals_fd_against_the_test_images(tmp_path, capsys):
    checkpoint = _write_run(tmp_path, perturb_ema=False)  # a perturbed EMA's stiff likelihood solve costs 10 s a call
    direct = _evaluate(checkpoint, tmp_path, capsys)
    mu, sigma = feature_statistics(DigitsFeatureExtractor()(_digits("test")).double())
    save_reference_statistics(tmp_path / "digits_test.npz", mu, sigma)
    saved = _evaluate(checkpoint, tmp_path, capsys, "--reference-stats", str(tmp_path / "digits_test.npz"))
    assert saved["fd"] == pytest.approx(direct["fd"], rel=1e-7)
    assert saved["fd_floor"] is None  # no test/train floor is computed against saved statistics


def test_feature_flags_are_checked_before_the_run_loads(tmp_path, capsys):
    checkpoint = _write_run(tmp_path)
    for flags, message in ((["--inception-weights", "a.pth", "--dinov2-weights", "b.pth"], "pass one"),
                           (["--reference-stats", str(tmp_path / "none.npz")], "--write-reference-stats"),
                           (["--write-reference-stats", str(tmp_path / "s.pkl")], ".npz")):
        assert main(["evaluate", "--checkpoint", str(checkpoint), *flags]) == 2
        assert message in capsys.readouterr().err
