"""Runs trained on VAE latents: what their checkpoint records, and how their samples become images.

A ``DiffusionModule`` fitted on a ``LatentDataModule`` keeps the DataModule's ``latent_record`` — the VAE folder
and EDM2's scaling constants — in its checkpoint under :data:`LATENTS_KEY`, so that ``pynodeta sample`` can
decode without the data; ``pynodeta sample --vae DIR`` overrides the folder (or names one for a run that did
not record it, then with EDM2's constants for Stable Diffusion's VAE).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["LATENTS_KEY", "latent_record_of", "check_latent_record", "display_decoder", "run_decoder"]

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


def run_decoder(record: dict | None, vae: str | None, sample_shape, device):
    """A ``LatentEncoder`` to decode a run's samples, or None for a pixel run without ``--vae``.

    ``record``: the checkpoint's latent record; ``vae``: ``--vae`` (overrides the recorded folder)."""
    from pynodeta.diffusion.latents import EDM2_SD_VAE_SCALING, LatentEncoder, LatentScaling

    if record is None and vae is None:
        return None
    scaling = EDM2_SD_VAE_SCALING if record is None else LatentScaling.from_dict(record["scaling"])
    folder = vae if vae is not None else record["vae"]
    if vae is None and not Path(folder).exists():
        raise ValueError(f"the run decodes with the VAE {folder!r}, which is not there; pass its folder with --vae")
    decoder = LatentEncoder(folder, scaling, device=device)
    if int(sample_shape[0]) != decoder.latent_channels:
        raise ValueError(f"--vae {str(folder)!r} has {decoder.latent_channels} latent channels but the run's samples "
                         f"have {sample_shape[0]}; pass the VAE the run's latents were encoded with")
    return decoder
