"""The Fréchet-distance score of ``pynodeta phema --sweep``: each reconstruction is sampled and scored by
the training module's own evaluation (``evaluate_samples``: the same noise for every σ_rel, FD against
the test images beside the real-data floor, digits features for 8×8 digits, Inception where the module
names its weights).

The run (module and data) is read by :func:`pynodeta.train.run_loader.load_run`, under the trust policy
every command shares, and matched against the snapshots before anything is sampled."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from .run_match import check_same_run
from .snapshots import list_snapshots


def fd_scorer(checkpoint: str, snapshots: str, target: str, num_samples: int, sampler: str | None,
              steps: int | None, grid_dir: Path, *, allow_modules: Iterable[str] = (), unsafe: bool = False,
              ) -> tuple[Callable[[dict, float], float], Callable[[], float]]:
    """(score(state_dict, σ_rel) → FD, floor() → the real-data floor FD(train, test))."""
    from pynodeta.train.diffusion_evaluation import evaluate_samples
    from pynodeta.train.run_loader import load_run, read_run_checkpoint

    infos = list_snapshots(snapshots)
    content = read_run_checkpoint(checkpoint, unsafe=unsafe, allow_modules=allow_modules)
    check_same_run(content, infos, infos[-1].step, target, checkpoint)
    run = load_run(checkpoint, allow_modules=allow_modules, unsafe=unsafe)
    if not hasattr(run.module, "draw") or run.datamodule is None:
        raise ValueError(f"{checkpoint!r} is not a diffusion training run with its data (a DiffusionModule and a "
                         "DataModule); --sweep samples the reconstructions and scores them against the test images")
    network, module, datamodule = run.module.get_submodule(target), run.module, run.datamodule
    result: dict = {}

    def score(state: dict, sigma_rel: float) -> float:
        network.load_state_dict(state)
        result.update(evaluate_samples(module, grid_dir / f"samples_sigma_rel_{sigma_rel:.3f}.png", datamodule,
                                       num_samples, sampler, steps))
        return result["fd"]

    return score, lambda: result["fd_floor"]
