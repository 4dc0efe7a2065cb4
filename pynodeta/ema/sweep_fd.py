"""The Fréchet-distance score of ``pynodeta phema --sweep``: each reconstruction is sampled and scored by
the training module's own evaluation (``evaluate_samples``: the same noise for every σ_rel, FD against
the test images beside the real-data floor, digits features for 8×8 digits, Inception where the module
names its weights)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import yaml


def datamodule_of_run(checkpoint: str | Path):
    """The DataModule of the ``config.yaml`` LightningCLI saved beside ``checkpoint`` (or one level up)."""
    path = Path(checkpoint)
    beside = [d / "config.yaml" for d in (path.parent, path.parent.parent) if (d / "config.yaml").is_file()]
    if not beside:
        raise ValueError(f"no config.yaml beside {str(path)!r} (or one level up): --sweep rebuilds the run's data "
                         "from the config that `pynodeta fit` saves in the run directory")
    data = (yaml.safe_load(beside[0].read_text()) or {}).get("data") or {}
    if "class_path" not in data:
        raise ValueError(f"{beside[0]} has no data: class_path section")
    module_name, _, class_name = data["class_path"].rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)(**(data.get("init_args") or {}))


def fd_scorer(checkpoint: str, target: str, num_samples: int, sampler: str | None, steps: int | None,
              grid_dir: Path) -> tuple[Callable[[dict, float], float], Callable[[], float]]:
    """(score(state_dict, σ_rel) → FD, floor() → the real-data floor FD(train, test))."""
    from pynodeta.diagnose.loading import load_checkpoint
    from pynodeta.train.diffusion_evaluation import evaluate_samples

    module, _ = load_checkpoint(checkpoint)
    if not hasattr(module, "draw"):
        raise ValueError(f"{checkpoint!r} is not a diffusion training run (its LightningModule has no draw()); "
                         "--sweep needs a DiffusionModule checkpoint")
    network, datamodule = getattr(module, target), datamodule_of_run(checkpoint)
    result: dict = {}

    def score(state: dict, sigma_rel: float) -> float:
        network.load_state_dict(state)
        result.update(evaluate_samples(module, grid_dir / f"samples_sigma_rel_{sigma_rel:.3f}.png", datamodule,
                                       num_samples, sampler, steps))
        return result["fd"]

    return score, lambda: result["fd_floor"]
