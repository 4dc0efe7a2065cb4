"""Reference statistics (μ, Σ of a data set's features), computed once and reused for every FID / FD_DINOv2.

Files:

- ``.npz`` with arrays ``mu`` (dim,) and ``sigma`` (dim, dim): pytorch-fid's format (``fid_score.py
  --save-stats``) and EDM's; written here atomically, read with ``allow_pickle=False``.
- ``.pkl``: NVlabs/edm2's reference files (``calculate_metrics.py ref``, e.g. ``dataset-refs/img512.pkl``), a
  pickled ``{"fid": {"mu", "sigma"}, "fd_dinov2": {"mu", "sigma"}, ...}``. They are read by an unpickler that can
  build nothing but numpy arrays, dtypes and plain containers: any other name the file holds (code it would run)
  is refused, as ``torch.load(weights_only=True)`` does for checkpoints.

The statistics follow pytorch-fid and edm2: the float64 mean and the unbiased (n − 1) covariance.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .._atomic import atomic_write

__all__ = ["FeatureMoments", "save_reference_statistics", "load_reference_statistics"]

class FeatureMoments:
    """Running sums of features, so that 50 000 × 2048 features need not be held: (dim,) and (dim, dim) float64.

    ``add`` a batch at a time; under DDP, sum ``count``, ``total`` and ``outer`` over ranks (all-reduce) before
    ``statistics``, as edm2's ``calculate_stats_for_iterable`` does.
    """

    def __init__(self, dim: int):
        self.count = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, features: torch.Tensor) -> None:
        """features: (batch, dim)."""
        if features.ndim != 2 or features.shape[1] != len(self.total):
            raise ValueError(f"features must have shape (batch, {len(self.total)}), got {tuple(features.shape)}")
        features = features.detach().to(device=self.total.device, dtype=torch.float64)
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN/Inf; check the images handed to the feature extractor")
        self.count += len(features)
        self.total += features.sum(dim=0)
        self.outer += features.T @ features

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(μ (dim,), Σ (dim, dim)) with Σ = (Σᵢ xᵢxᵢᵀ − n μμᵀ) / (n − 1), numpy float64."""
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 feature vectors, got {self.count}")
        mean = self.total / self.count
        covariance = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean.cpu().numpy(), covariance.cpu().numpy()


def save_reference_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write pytorch-fid's ``.npz`` (``mu``, ``sigma``) atomically: a crash leaves the old file or none."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"path {str(path)!r} must end in .npz (pytorch-fid's statistics format)")
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    _check_shapes(str(path), mu, sigma)
    atomic_write(path, lambda file: np.savez(file, mu=mu, sigma=sigma))
    return path


def _read_edm2_pickle(path: Path) -> dict:
    # the one numpy-only unpickler (imported here: pynodeta.data would bring Lightning into every metrics import)
    from ..data.safe_pickle import NUMPY_ARRAY_GLOBALS, RefusedPickleGlobal, load_restricted

    try:
        with path.open("rb") as file:
            content = load_restricted(io.BufferedReader(file), NUMPY_ARRAY_GLOBALS, encoding="ASCII")
    except RefusedPickleGlobal as error:
        raise ValueError(f"path {str(path)!r} names {error}, which a statistics file never needs; it is not read "
                         "(that would run code). Pass a .npz with mu and sigma, or edm2's dataset-refs .pkl") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as error:  # truncated or not a pickle at all
        raise ValueError(f"path {str(path)!r} is not a readable statistics pickle ({error or type(error).__name__}); "
                         "pass a .npz with mu and sigma, or edm2's dataset-refs .pkl") from None
    if not isinstance(content, dict):
        raise ValueError(f"path {str(path)!r} holds a {type(content).__name__}, not edm2's statistics dict")
    return content


def load_reference_statistics(path: str | os.PathLike, metric: str = "fid") -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) from pytorch-fid's ``.npz`` or, for ``metric`` ``"fid"`` or ``"fd_dinov2"``, edm2's ``.pkl``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {str(path)!r} is not a file; write one with `pynodeta "
                                "evaluate --write-reference-stats PATH` or pass pytorch-fid's .npz / edm2's .pkl")
    if path.suffix == ".pkl":
        content = _read_edm2_pickle(path)
        if metric not in content or not isinstance(content[metric], dict):
            raise ValueError(f"path {str(path)!r} has no {metric!r} statistics (it has {sorted(map(str, content))})")
        mu, sigma = content[metric].get("mu"), content[metric].get("sigma")
    else:
        try:
            with np.load(path, allow_pickle=False) as arrays:
                mu, sigma = (arrays[key] if key in arrays else None for key in ("mu", "sigma"))
        except (ValueError, OSError) as error:
            raise ValueError(f"path {str(path)!r} is not an .npz of arrays ({error}); pass pytorch-fid's "
                             ".npz with mu and sigma") from None
    if mu is None or sigma is None:
        raise ValueError(f"path {str(path)!r} lacks mu or sigma; pass pytorch-fid's .npz (mu, sigma)")
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    _check_shapes(str(path), mu, sigma)
    return mu, sigma


def _check_shapes(where: str, mu: np.ndarray, sigma: np.ndarray) -> None:
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{where}: mu must be (dim,) and sigma (dim, dim), got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{where}: mu or sigma contains NaN/Inf")
