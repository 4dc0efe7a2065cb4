"""A released NVlabs/edm2 network pickle as a run: the branch of :func:`~pynodeta.train.run_loader.load_run`
for ``.pkl`` files (``pynodeta sample --checkpoint edm2-img512-xs-2147483-0.135.pkl``).

The pickle is read by :func:`pynodeta.diffusion.released_edm2.load_released_edm2`, which runs none of the
file's code (its embedded source stays text); the network is put into a ``DiffusionModule`` with the
``EDM2Objective`` (its uncertainty head loaded too), sampled by default as EDM2's ``generate_images.py``
does: Heun on 32 Karras levels over σ ∈ [0.002, 80]. The weights are the pickle's ``ema``: a released
file is already a post-hoc EMA, so there are no other averages to choose from.
"""

from __future__ import annotations

import re
from pathlib import Path

from pynodeta.diffusion.released_phema import RELEASED_FORMAT

from .safe_load import CheckpointError

__all__ = ["RELEASED_FORMAT", "RELEASED_SUFFIX", "released_edm2_run"]

RELEASED_SUFFIX = ".pkl"


def released_edm2_run(path: Path, config=None, payload: dict | None = None):
    """The :class:`~pynodeta.train.run_loader.Run` of an NVlabs/edm2 pickle, or of ``payload``, a
    ``pynodeta phema`` reconstruction from NVlabs' snapshots (already read with weights_only=True);
    ``config`` must be None."""
    from pynodeta.diffusion.released_edm2 import load_released_edm2
    from pynodeta.diffusion.released_phema import released_from_payload

    if config is not None:
        raise ValueError(f"--config {str(config)!r}: {str(path)!r} is an NVlabs/edm2 network, which records its own "
                         f"architecture; drop --config")
    if payload is not None:
        return _run(released_from_payload(payload, path), path, payload.get("posthoc"))
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {str(path)!r} does not exist")
    try:
        released = load_released_edm2(path)
    except Exception as error:  # noqa: BLE001 - a refused global, a torn file: one message naming the file
        if isinstance(error, ValueError):
            raise
        raise CheckpointError(f"{str(path)!r} is not a readable NVlabs/edm2 network pickle: {error}") from error
    return _run(released, path, _posthoc_from_name(path))


def _run(released, path: Path, posthoc: dict | None):
    from .diffusion import DiffusionModule
    from .objectives import EDM2Objective
    from .run_loader import Run

    precond = released.denoiser
    objective = EDM2Objective(sigma_data=precond.sigma_data, logvar_channels=precond.logvar_fourier.freqs.numel())
    module = DiffusionModule(precond.unet, objective, averaging="none")
    objective.uncertainty.fourier.load_state_dict(precond.logvar_fourier.state_dict())
    objective.uncertainty.linear.load_state_dict(precond.logvar_linear.state_dict())
    module.released = released  # the pickle's encoder data (latent scale and bias, VAE name): run_decoder's
    return Run(module.eval(), checkpoint=path, posthoc=posthoc)


def _posthoc_from_name(path: Path) -> dict | None:
    """σ_rel and training time from NVlabs' file name ``<prefix>-<kimg>-<sigma_rel>.pkl`` (reconstruct_phema.py)."""
    match = re.fullmatch(r".*-(\d+)-(\d+\.\d+)\.pkl", path.name)
    if match is None:
        return None
    return {"sigma_rel": float(match.group(2)), "step": f"{int(match.group(1))} kimg"}
