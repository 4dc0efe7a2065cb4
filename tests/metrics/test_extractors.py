"""The shipped digits extractor and the Inception extractor's loading rules."""

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from pynodeta.metrics import DigitsFeatureExtractor, InceptionFeatureExtractor, frechet_distance
from pynodeta.metrics.inception import uint8_rgb


def _digits(n=600):
    digits = load_digits()
    return torch.from_numpy(digits.images[:n]).float().unsqueeze(1) / 8 - 1, torch.from_numpy(digits.target[:n])


def test_shipped_digits_weights_classify_and_separate_real_from_noise():
    extractor = DigitsFeatureExtractor()
    images, labels = _digits()
    feats = extractor(images)
    assert feats.shape == (600, 64)
    accuracy = float((extractor.net.classifier(feats).argmax(1) == labels).float().mean())
    assert accuracy > 0.95  # the shipped file holds the trained classifier, not a random init
    real_vs_real = frechet_distance(feats[:300], feats[300:])
    noise = extractor(torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert frechet_distance(feats[:300], noise) > 10 * real_vs_real


def test_digits_extractor_refuses_bad_input(tmp_path):
    extractor = DigitsFeatureExtractor()
    with pytest.raises(ValueError, match=r"\(batch, 1, 8, 8\)"):
        extractor(torch.zeros(2, 1, 28, 28))
    with pytest.raises(FileNotFoundError, match="train_digits_features"):
        DigitsFeatureExtractor(tmp_path / "missing.pt")


class _FakeDetector(nn.Module):
    """NVlabs' detector's calling convention: uint8 RGB in, 2048 features out."""

    def forward(self, images: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        assert images.dtype == torch.uint8 and images.shape[1] == 3
        return images.float().mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 deprecates torch.jit, which the detector is
def test_inception_extractor_needs_a_file_and_feeds_uint8_rgb(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pkl"):
        InceptionFeatureExtractor(tmp_path / "missing.pkl")
    path = tmp_path / "detector.pt"
    torch.jit.save(torch.jit.script(_FakeDetector()), str(path))
    feats = InceptionFeatureExtractor(path)(torch.zeros(2, 1, 8, 8))
    assert feats.shape == (2, 2048)
    np.testing.assert_allclose(feats.numpy(), 128.0)  # 0 in [−1, 1] is 127.5 → 128 in uint8
    (tmp_path / "weights.bin").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="TorchScript"):
        InceptionFeatureExtractor(tmp_path / "weights.bin")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_the_pixel_conversion_refuses_non_finite_images_instead_of_casting_them_to_real_pixels(bad):
    images = torch.zeros(3, 1, 4, 4)
    images[1, 0, 2, 2] = bad
    with pytest.raises(ValueError, match=r"images contain NaN/Inf \(batch positions \[1\]\)"):
        uint8_rgb(images)


def _load_and_mark(archive: bytes, marker: str):
    """What a pickled detector's reduce call does when plain pickle.load runs it; the marker shows it ran."""
    Path(marker).touch()
    return torch.jit.load(io.BytesIO(archive))


class _PickledDetector:
    """Pickles as NVlabs' .pkl is laid out: a call that receives the module's torch.jit.save archive."""

    def __init__(self, archive: bytes, marker: Path):
        self.archive, self.marker = archive, marker

    def __reduce__(self):
        return _load_and_mark, (self.archive, str(self.marker))


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 deprecates torch.jit, which the detector is
@pytest.mark.parametrize("protocol", [2, 4])  # 2 stores bytes as latin-1 text rebuilt by _codecs.encode
def test_inception_pkl_is_read_without_running_its_pickle(tmp_path, protocol):
    archive = io.BytesIO()
    torch.jit.save(torch.jit.script(_FakeDetector()), archive)
    marker, path = tmp_path / "pickle-ran", tmp_path / "inception-2015-12-05.pkl"
    path.write_bytes(pickle.dumps({"detector": _PickledDetector(archive.getvalue(), marker)}, protocol=protocol))
    feats = InceptionFeatureExtractor(path)(torch.zeros(2, 3, 8, 8))
    np.testing.assert_allclose(feats.numpy(), 128.0)
    assert not marker.exists()  # the archive was taken from the file; the call the pickle names never ran


def test_inception_refuses_a_pkl_that_would_run_code(tmp_path):
    marker, path = tmp_path / "pickle-ran", tmp_path / "inception-2015-12-05.pkl"
    path.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(ValueError, match="holds no TorchScript archive.*never unpickled.*torch.jit.save"):
        InceptionFeatureExtractor(path)
    assert not marker.exists()
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="not a readable pickle"):
        InceptionFeatureExtractor(path)


def test_inception_refuses_a_state_dict_archive(tmp_path):
    path = tmp_path / "inception.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="does not hold pytorch-fid's FID Inception weights"):
        InceptionFeatureExtractor(path)
