"""Runs trained on VAE latents: what their checkpoint records, and how their samples become images.

A ``DiffusionModule`` fitted on a ``LatentDataModule`` keeps the DataModule's ``latent_record`` — the VAE folder
and EDM2's scaling constants — in its checkpoint under :data:`LATENTS_KEY`, so that ``pynodeta sample`` can
decode without the data; ``pynodeta sample --vae DIR`` overrides the folder (or names one for a run that did
not record it, then with EDM2's constants for Stable Diffusion's VAE).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pynodeta.diffusion.latents import LatentScaling

__all__ = ["LATENTS_KEY", "latent_record_of", "check_latent_record", "display_decoder", "run_decoder",
           "released_latent_scaling"]

LATENTS_KEY = "pynodeta_latents"


def latent_record_of(trainer) -> dict | None:
    """The ``latent_record`` of the trainer's DataModule (a ``LatentDataModule``), None for pixel data."""
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    return getattr(datamodule, "latent_record", None)


def check_latent_record(record, where: str) -> dict:
    """``record`` if it is ``{"vae": str, "scaling": {...}}`` with valid constants; else ValueError naming ``where``."""
    from pynodeta.diffusion.latents import LatentScaling

    if not isinstance(record, dict) or not isinstance(record.get("vae"), str) or set(record) != {"vae", "scaling"}:
        raise ValueError(f"{where}: the latent record must be {{'vae': folder, 'scaling': {{...}}}}, got {record!r}")
    LatentScaling.from_dict(record["scaling"])
    return record


def display_decoder(datamodule):
    """``datamodule.decode_for_display`` (latents → images in [-1, 1]) for latent data, None for pixels."""
    return getattr(datamodule, "decode_for_display", None)


def run_decoder(run, vae: str | None, device):
    """A ``LatentEncoder`` to decode a run's samples, or None for a pixel run without ``--vae``.

    ``run``: a loaded run (its checkpoint's latent record, or a released network's encoder constants); ``vae``:
    ``--vae`` (overrides the recorded folder)."""
    from pynodeta.diffusion.latents import EDM2_SD_VAE_SCALING, LatentEncoder, LatentScaling

    record, sample_shape = run.latents, run.module.sample_shape
    if record is None and vae is None:
        return None
    if record is not None:
        scaling = LatentScaling.from_dict(record["scaling"])
    else:  # a released NVlabs network carries its encoder's scale and bias; else EDM2's constants for SD's VAE
        scaling = released_latent_scaling(getattr(run.module, "released", None)) or EDM2_SD_VAE_SCALING
    folder = vae if vae is not None else record["vae"]
    if vae is None and not Path(folder).exists():
        raise ValueError(f"the run decodes with the VAE {folder!r}, which is not there; pass its folder with --vae")
    decoder = LatentEncoder(folder, scaling, device=device)
    if int(sample_shape[0]) != decoder.latent_channels:
        raise ValueError(f"--vae {str(folder)!r} has {decoder.latent_channels} latent channels but the run's samples "
                         f"have {sample_shape[0]}; pass the VAE the run's latents were encoded with")
    return decoder


def released_latent_scaling(released) -> LatentScaling | None:
    """The scaling a released NVlabs/edm2 network's latents were made with: its pickled encoder's ``scale`` and
    ``bias`` (``StabilityVAEEncoder``: scale = final_std / raw_std, bias = final_mean − raw_mean · scale), as a
    ``LatentScaling`` with EDM2's final mean 0 and std 0.5; EDM2's own constants where they agree to float32.
    None for a network without such an encoder."""
    import numpy as np

    from pynodeta.diffusion.latents import EDM2_SD_VAE_SCALING, LatentScaling

    encoder = getattr(released, "encoder", None) or {}
    if "scale" not in encoder or "bias" not in encoder:
        return None
    scale = np.asarray(encoder["scale"], dtype=np.float64).ravel()
    bias = np.asarray(encoder["bias"], dtype=np.float64).ravel()
    if (np.allclose(scale, EDM2_SD_VAE_SCALING.scale, rtol=1e-6, atol=0)
            and np.allclose(bias, EDM2_SD_VAE_SCALING.bias, rtol=1e-6, atol=1e-7)):
        return EDM2_SD_VAE_SCALING
    final_mean, final_std = 0.0, 0.5
    return LatentScaling(raw_mean=tuple((final_mean - bias) / scale), raw_std=tuple(final_std / scale),
                         final_mean=(final_mean,), final_std=(final_std,))
