"""The Fréchet-distance score of ``pynodeta phema --sweep`` for 8×8-digits diffusion runs."""

from __future__ import annotations

from collections.abc import Callable

import torch


def digits_real_features() -> tuple[torch.Tensor, torch.Tensor]:
    """Digits-extractor features of (training pool, test) images: the split of DigitsDataModule."""
    from sklearn.datasets import load_digits

    from pynodeta.data.sampling import stratified_split
    from pynodeta.metrics import DigitsFeatureExtractor

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 8 - 1
    pool, test = stratified_split(digits.target, 360, 1)
    extractor = DigitsFeatureExtractor()
    return extractor(images[pool]), extractor(images[test])


def digits_fd_scorer(checkpoint: str, target: str, num_samples: int, sampler: str | None, steps: int | None,
                     seed: int) -> tuple[Callable[[dict, float], float], float]:
    """(score(state_dict, σ_rel) → FD of samples vs the test images, real-data floor FD(pool, test))."""
    from pynodeta.diagnose.loading import load_checkpoint
    from pynodeta.metrics import DigitsFeatureExtractor, frechet_distance

    module, _ = load_checkpoint(checkpoint)
    if not hasattr(module, "draw") or tuple(getattr(module, "sample_shape", ())) != (1, 8, 8):
        raise ValueError("--sweep scores 8×8-digits diffusion runs (a DiffusionModule with sample_shape (1, 8, 8)); "
                         "for other data write each reconstruction with --sigma-rel and evaluate it separately")
    network = getattr(module, target)
    extractor = DigitsFeatureExtractor()
    pool_features, test_features = digits_real_features()

    def score(state: dict, sigma_rel: float) -> float:
        network.load_state_dict(state)
        samples = module.draw(num_samples, sampler, steps, generator=torch.Generator().manual_seed(seed))
        return frechet_distance(extractor(samples.images.clamp(-1, 1)), test_features)

    return score, frechet_distance(pool_features, test_features)
