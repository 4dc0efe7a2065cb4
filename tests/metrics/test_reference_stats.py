"""Reference statistics: streamed moments, pytorch-fid's .npz, edm2's .pkl read without running code, and the
distance against a direct transcription of pytorch-fid's formula."""

import pickle

import numpy as np
import pytest
import torch
from scipy import linalg

from pynodeta.metrics import (
    FeatureMoments,
    feature_statistics,
    frechet_distance_from_statistics,
    load_reference_statistics,
    save_reference_statistics,
)


def _pytorch_fid_formula(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid 0.3.0's calculate_frechet_distance, transcribed."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("num", [200, 6])  # 6 < 16 dimensions: singular covariances
def test_distance_equals_pytorch_fids_formula(num):
    rng = np.random.default_rng(num)
    a, b = rng.normal(size=(num, 16)), rng.normal(1.0, 2.0, size=(num, 16))
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    assert frechet_distance_from_statistics(mu1, s1, mu2, s2) == pytest.approx(_pytorch_fid_formula(mu1, s1, mu2, s2),
                                                                               rel=1e-10)


def test_streamed_moments_equal_numpy_mean_and_unbiased_covariance():
    rng = np.random.default_rng(0)
    features = rng.normal(3.0, 2.0, size=(103, 7))
    moments = FeatureMoments(7)
    for start in range(0, 103, 25):  # uneven batches, as the last one of a 50k run
        moments.add(torch.from_numpy(features[start:start + 25]).float())
    mu, sigma = moments.statistics()
    features32 = features.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mu, features32.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features32, rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(batch, 7\)"):
        moments.add(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureMoments(3).statistics()


def test_npz_round_trip_is_pytorch_fids_format(tmp_path):
    rng = np.random.default_rng(1)
    mu, sigma = rng.normal(size=4), np.cov(rng.normal(size=(10, 4)), rowvar=False)
    path = save_reference_statistics(tmp_path / "refs" / "cifar10.npz", mu, sigma)
    with np.load(path) as arrays:  # what pytorch-fid's fid_score reads: keys mu and sigma
        assert sorted(arrays.files) == ["mu", "sigma"]
    loaded = load_reference_statistics(path)
    np.testing.assert_array_equal(loaded[0], mu)
    np.testing.assert_array_equal(loaded[1], sigma)
    assert [p.name for p in path.parent.iterdir()] == ["cifar10.npz"]  # no temporary file left
    with pytest.raises(ValueError, match=r"must end in \.npz"):
        save_reference_statistics(tmp_path / "x.pkl", mu, sigma)
    with pytest.raises(ValueError, match=r"sigma \(dim, dim\)"):
        save_reference_statistics(tmp_path / "x.npz", mu, sigma[:3])
    np.savez(tmp_path / "other.npz", mean=mu)
    with pytest.raises(ValueError, match="lacks mu or sigma"):
        load_reference_statistics(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="--write-reference-stats"):
        load_reference_statistics(tmp_path / "missing.npz")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_edm2_pkl_is_read_for_each_metric_without_running_code(tmp_path, protocol):
    rng = np.random.default_rng(2)
    stats = {"num_images": 50000,
             "fid": {"mu": rng.normal(size=3), "sigma": np.eye(3)},
             "fd_dinov2": {"mu": rng.normal(size=2), "sigma": 2 * np.eye(2, dtype=np.float32)}}
    path = tmp_path / "img512.pkl"
    path.write_bytes(pickle.dumps(stats, protocol=protocol))  # edm2's save_stats: pickle.dump of this dict
    mu, sigma = load_reference_statistics(path, "fid")
    np.testing.assert_array_equal(mu, stats["fid"]["mu"])
    mu, sigma = load_reference_statistics(path, "fd_dinov2")
    np.testing.assert_array_equal(sigma, 2 * np.eye(2))
    assert sigma.dtype == np.float64
    with pytest.raises(ValueError, match="no 'is' statistics"):
        load_reference_statistics(path, "is")
    marker = tmp_path / "ran"
    path.write_bytes(pickle.dumps({"fid": _RunsCode(marker)}, protocol=protocol))
    with pytest.raises(ValueError, match=r"(__builtin__|builtins)\.exec.*never needs"):
        load_reference_statistics(path)
    assert not marker.exists()
