"""NVlabs' released EDM2 networks (``edm2-img512-xs-2147483-0.135.pkl``, training snapshots) as pynodeta's
``EDM2Precond`` around an ``EDM2UNet``, read without executing the pickles' code.

The file is read by :func:`~pynodeta.diffusion.nvlabs_pickle.load_nvlabs_pickle`; its ``ema`` network (a
``networks_edm2.Precond``, or a bare ``UNet``) is rebuilt from the init arguments NVlabs' ``persistence``
recorded, mapped argument by argument (:data:`PRECOND_ARGUMENTS`, :data:`UNET_ARGUMENTS`), and its tensors
are renamed by :data:`TENSOR_NAME_MAP`. Every pynodeta tensor must receive exactly one pickled tensor of the
same shape, and every pickled tensor must find a place: anything else is refused, naming the tensor.
Weights stored in float16 (as NVlabs stores them) are converted to float32; ``use_fp16`` only chose
NVlabs' CUDA compute precision and is recorded, not applied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .edm2 import EDM2Precond
from .nvlabs_pickle import PersistentObject, load_nvlabs_pickle, module_tensors

__all__ = ["ReleasedEDM2", "edm2_from_nvlabs", "edm2_from_arguments", "load_released_edm2", "read_released_edm2",
           "TENSOR_NAME_MAP", "UNET_ARGUMENTS",
           "PRECOND_ARGUMENTS"]

# NVlabs' name prefix -> pynodeta's, for a pickled Precond (networks_edm2.py: Precond.unet, .logvar_*).
# Inside the U-Net the names are the same (enc.<res>x<res>_block<i>.conv_res0.weight, emb_fourier.freqs, ...).
TENSOR_NAME_MAP = {
    "Precond": (("unet.", "net."), ("logvar_fourier.", "logvar_fourier."), ("logvar_linear.", "logvar_linear.")),
    "UNet": (("", ""),),
}

# networks_edm2.UNet's arguments, in their positional order, and what each becomes in EDM2UNet (same names).
UNET_ARGUMENTS = ("img_resolution", "img_channels", "label_dim", "model_channels", "channel_mult",
                  "channel_mult_noise", "channel_mult_emb", "num_blocks", "attn_resolutions", "label_balance",
                  "concat_balance")
BLOCK_ARGUMENTS = ("channels_per_head", "dropout", "res_balance", "attn_balance", "clip_act")  # Block's, passed on
# networks_edm2.Precond's own arguments, positional order; the rest go to its UNet.
PRECOND_ARGUMENTS = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_data", "logvar_channels")


@dataclass
class ReleasedEDM2:
    """A released EDM2 network, rebuilt: the denoiser and what the pickle says about its images."""

    denoiser: EDM2Precond              # D(x, σ, class_labels=None), float32, in eval mode
    use_fp16: bool                     # NVlabs ran it in float16 on CUDA (we run float32)
    encoder: dict | None               # the latent encoder's data: class_name, vae_name, scale, bias (or None)
    path: Path | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, resolution, resolution) of what the network draws (4×64×64 latents for ImageNet-512)."""
        unet = self.denoiser.unet
        return (unet.img_channels, unet.img_resolution, unet.img_resolution)


def _arguments(obj: PersistentObject, names: tuple[str, ...]) -> dict:
    if len(obj.init_args) > len(names):
        raise ValueError(f"the pickled {obj.class_name} was built with {len(obj.init_args)} positional arguments, "
                         f"more than the {len(names)} its class takes")
    arguments = dict(zip(names, obj.init_args))
    twice = sorted(set(arguments) & set(obj.init_kwargs))
    if twice:
        raise ValueError(f"the pickled {obj.class_name} gives {twice[0]!r} both by position and by keyword")
    return arguments | obj.init_kwargs


def _build_unet(arguments: dict, where: str) -> nn.Module:
    from pynodeta.models.diffusion import EDM2UNet

    unknown = sorted(set(arguments) - set(UNET_ARGUMENTS) - set(BLOCK_ARGUMENTS) - {"resample_filter"})
    if unknown:
        raise ValueError(f"{where}: the network was built with {unknown[0]!r}, which EDM2UNet has no counterpart "
                         f"for; this loader maps {list(UNET_ARGUMENTS + BLOCK_ARGUMENTS)}")
    missing = [name for name in ("img_resolution", "img_channels", "label_dim") if name not in arguments]
    if missing:
        raise ValueError(f"{where}: the pickle does not record the network's {missing[0]!r} (its init arguments "
                         f"were not saved); this loader rebuilds networks from those arguments")
    if list(arguments.pop("resample_filter", [1, 1])) != [1, 1]:  # EDM2's only filter, and pynodeta's resample's
        raise ValueError(f"{where}: resample_filter {arguments.get('resample_filter')} is not EDM2's [1, 1], the "
                         f"only one EDM2UNet implements")
    for name in ("channel_mult", "attn_resolutions"):
        if name in arguments:
            arguments[name] = tuple(arguments[name])
    with torch.device("meta"):  # shapes only: every tensor is replaced by the pickle's below
        return EDM2UNet(**arguments)


def edm2_from_nvlabs(network: PersistentObject, where: str = "the pickle") -> tuple[nn.Module, bool]:
    """(pynodeta network, use_fp16) of a pickled ``networks_edm2.Precond`` (→ ``EDM2Precond``) or ``UNet``
    (→ ``EDM2UNet``), weights in float32, in eval mode."""
    if not isinstance(network, PersistentObject) or network.class_name not in TENSOR_NAME_MAP:
        what = network.class_name if isinstance(network, PersistentObject) else type(network).__name__
        raise ValueError(f"{where}: the network is a {what}; expected NVlabs/edm2's networks_edm2 Precond or UNet")
    names = PRECOND_ARGUMENTS if network.class_name == "Precond" else UNET_ARGUMENTS
    return edm2_from_arguments(network.class_name, nvlabs_arguments(network, names), module_tensors(network), where)


def nvlabs_arguments(network: PersistentObject, names: tuple[str, ...]) -> dict:
    """The init arguments a persistent object recorded, positional ones named by ``names``."""
    return _arguments(network, names)


def edm2_from_arguments(class_name: str, arguments: dict, tensors: dict[str, torch.Tensor],
                        where: str = "the pickle") -> tuple[nn.Module, bool]:
    """(pynodeta network, use_fp16) from NVlabs' class name ("Precond" or "UNet"), its init arguments by name
    and its tensors under NVlabs' names: the mapping of :func:`edm2_from_nvlabs`, without the pickle."""
    if class_name not in TENSOR_NAME_MAP:
        raise ValueError(f"{where}: class {class_name!r} is not NVlabs/edm2's Precond or UNet")
    arguments = dict(arguments)
    use_fp16 = False
    if class_name == "Precond":
        use_fp16 = bool(arguments.pop("use_fp16", True))
        sigma_data = float(arguments.pop("sigma_data", 0.5))
        logvar_channels = int(arguments.pop("logvar_channels", 128))
        with torch.device("meta"):
            built = EDM2Precond(_build_unet(arguments, where), sigma_data, logvar_channels)
    else:
        built = _build_unet(arguments, where)
    _load_mapped(built, tensors, TENSOR_NAME_MAP[class_name], where)
    return built.eval().requires_grad_(False), use_fp16


def _load_mapped(built: nn.Module, pickled: dict[str, torch.Tensor], name_map, where: str) -> None:
    renamed: dict[str, torch.Tensor] = {}
    for name, value in pickled.items():
        prefix = next((p for p in name_map if name.startswith(p[0])), None)
        if prefix is None:
            raise ValueError(f"{where}: the pickled tensor {name!r} has no place in pynodeta's EDM2 network "
                             f"(mapped prefixes: {[p for p, _ in name_map]})")
        renamed[prefix[1] + name[len(prefix[0]):]] = value
    expected = built.state_dict()
    problems = [f"{name} is not in the pickle" for name in expected if name not in renamed]
    problems += [f"the pickle's {name} has no place in EDM2UNet" for name in renamed if name not in expected]
    problems += [f"{name} has shape {tuple(renamed[name].shape)} in the pickle, {tuple(value.shape)} in EDM2UNet"
                 for name, value in expected.items() if name in renamed and renamed[name].shape != value.shape]
    if problems:
        hint = ""
        if any("attn_" in problem for problem in problems):
            hint = ("; NVlabs' blocks have no attention where out_channels < channels_per_head, pynodeta's keep one "
                    "head: such a network has no EDM2UNet counterpart")
        raise ValueError(f"{where}: the pickled network does not map onto EDM2UNet: {problems[0]}"
                         f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}{hint}")
    bad = [name for name, value in renamed.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise ValueError(f"{where}: the pickled tensor {bad[0]} holds NaN or Inf")
    built.load_state_dict({name: value.float() for name, value in renamed.items()}, assign=True)


def encoder_data(encoder) -> dict | None:
    """The latent encoder's class and numbers (``training/encoders.py``): what decoding its latents needs."""
    if not isinstance(encoder, PersistentObject):
        return None
    data = {"class_name": encoder.class_name}
    for key in ("vae_name", "scale", "bias"):
        if key in encoder.state:
            value = encoder.state[key]
            data[key] = value.tolist() if hasattr(value, "tolist") else value
    return data


def read_released_edm2(path: str | os.PathLike) -> dict:
    """The content of an NVlabs/edm2 pickle with its ``ema`` network checked to be there; nothing is executed."""
    where = f"{str(path)!r}"
    with open(path, "rb") as file:
        content = load_nvlabs_pickle(file)
    if not isinstance(content, dict) or "ema" not in content:
        keys = sorted(map(str, content))[:6] if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{where} holds {keys}, not NVlabs/edm2's dict with an 'ema' network "
                         f"(edm2-img512-*.pkl, network-snapshot-*.pkl or phema-*.pkl)")
    return content


def load_released_edm2(path: str | os.PathLike) -> ReleasedEDM2:
    """The ``ema`` network of an NVlabs/edm2 pickle as an ``EDM2Precond``; no code from the file is run."""
    content = read_released_edm2(path)
    network, use_fp16 = edm2_from_nvlabs(content["ema"], f"{str(path)!r}")
    if not isinstance(network, EDM2Precond):
        raise ValueError(f"{str(path)!r}: the 'ema' network is a bare UNet; released EDM2 pickles hold a Precond")
    return ReleasedEDM2(network, use_fp16, encoder_data(content.get("encoder")), Path(path))
