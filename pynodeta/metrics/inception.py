"""The standard FID feature extractor (Inception-v3, pool3, 2048 features) from weights on the user's disk.

pynodeta downloads no weights, so the extractor takes a path, to one of three files, all ports of
TensorFlow's ``inception-2015-12-05`` graph: NVlabs' ``inception-2015-12-05.pkl`` (the file EDM, EDM2 and
StyleGAN3 compute FID with, and the one their users already have in their download cache), its TorchScript
archive ``inception-2015-12-05.pt`` (StyleGAN2-ADA's, also what ``torch.jit.save`` writes), or pytorch-fid's
state dict ``pt_inception-2015-12-05-6726825d.pth``, run by our own ``FIDInceptionV3`` (read with
``weights_only=True``). The two families differ slightly (pytorch-fid's README says so: resizing and input
scaling are not TensorFlow's), so a score is comparable only with scores of the same file.

Nothing here unpickles. A config or checkpoint may name this class with any ``weights_path``, so
``pickle.load`` on that path would run whatever code the file names. A TorchScript module cannot be
pickled itself (PyTorch refuses), so a ``.pkl`` that holds one carries the module's ``torch.jit.save``
archive as a byte string, handed to a loader when unpickled. We read the pickle's opcodes with
``pickletools.genops``, which parses and never imports or calls anything the file names, take the one
byte string that is a TorchScript archive and give it to ``torch.jit.load``. A ``.pkl`` without such an
archive is refused, with a one-line conversion to a ``.pt`` for a file the user trusts.

``torch.jit.load`` runs no Python from the file (TorchScript code only calls TorchScript operators),
but PyTorch does not harden it against crafted archives: use the files from NVlabs' addresses.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

import torch
from torch import nn

from .fid_inception import PYTORCH_FID_WEIGHTS_URL, FIDInceptionV3

__all__ = ["InceptionFeatureExtractor", "INCEPTION_URL", "INCEPTION_TORCHSCRIPT_URL"]

INCEPTION_URL = ("https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/"
                 "inception-2015-12-05.pkl")
INCEPTION_TORCHSCRIPT_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                             "inception-2015-12-05.pt")
_ZIP_MAGIC = b"PK\x03\x04"
# for a .pkl we cannot read: the user unpickles their own trusted copy once, with NVlabs' own loader
_CONVERSION = ("python -c \"import pickle, torch; torch.jit.save(pickle.load(open('inception-2015-12-05.pkl', "
               "'rb')), 'inception-2015-12-05.pt')\"")


def _is_torchscript_archive(data: bytes | Path) -> bool:
    """A ``torch.jit.save`` zip: it holds ``constants.pkl`` (a ``torch.save`` zip does not; PyTorch tells
    the two apart the same way)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as archive:
            return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _as_archive_bytes(argument) -> bytes | None:
    """An opcode's argument as bytes when it may be a zip archive: a byte string, or (Python 3 bytes in a
    protocol-2 pickle, rebuilt by ``_codecs.encode``) a latin-1 text string."""
    if isinstance(argument, (bytes, bytearray)) and argument[:4] == _ZIP_MAGIC:
        return bytes(argument)
    if isinstance(argument, str) and argument[:4] == _ZIP_MAGIC.decode("latin-1"):
        try:
            return argument.encode("latin-1")
        except UnicodeEncodeError:
            return None
    return None


def _archives_in_pickle(path: Path) -> list[bytes]:
    """The TorchScript archives a pickle file carries as byte strings, read without unpickling it."""
    archives = []
    with path.open("rb") as file:
        try:
            for _opcode, argument, _position in pickletools.genops(file):
                data = _as_archive_bytes(argument)
                if data is not None and _is_torchscript_archive(data):
                    archives.append(data)
        except (ValueError, EOFError) as error:  # genops' errors for bytes that are not a pickle
            raise ValueError(f"weights_path {str(path)!r} is not a readable pickle ({error}); pass NVlabs' "
                             f"{INCEPTION_URL} or the TorchScript {INCEPTION_TORCHSCRIPT_URL}") from None
    return archives


def _refused_pickle(path: Path, found: int) -> ValueError:
    what = "holds no TorchScript archive" if found == 0 else f"holds {found} TorchScript archives, not one"
    return ValueError(
        f"weights_path {str(path)!r} {what}, so it is not NVlabs' Inception detector; pickles are never "
        f"unpickled here (that would run any code the file names). Pass the TorchScript copy "
        f"{INCEPTION_TORCHSCRIPT_URL}, or convert a .pkl you trust once with: {_CONVERSION}")


class _PytorchFIDDetector(nn.Module):
    """NVlabs' calling convention (uint8 RGB in) over pytorch-fid's network, which reads [0, 1] images:
    x / 255 is what pytorch-fid's ``ToTensor`` makes of the PNG files it scores."""

    def __init__(self, network: FIDInceptionV3):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        return self.network(images.float() / 255)


def _is_legacy_torch_save(path: Path) -> bool:
    """A torch.save file from before PyTorch 1.6 (as pytorch-fid's weights): a pickle that starts with
    torch's magic number, protocol 2 then LONG1 0x1950a86a20f9469cfc6c."""
    with path.open("rb") as file:
        return file.read(4) == b"\x80\x02\x8a\x0a"


def _load_detector(path: Path) -> nn.Module:
    with path.open("rb") as file:
        is_zip = file.read(4) == _ZIP_MAGIC
    if (is_zip and not _is_torchscript_archive(path)) or (not is_zip and _is_legacy_torch_save(path)):
        return _PytorchFIDDetector(FIDInceptionV3.from_weights(path))  # a state dict: pytorch-fid's weights
    if is_zip:
        return torch.jit.load(str(path), map_location="cpu")
    if path.suffix != ".pkl":
        raise ValueError(f"weights_path {str(path)!r} is neither a TorchScript archive, a state dict nor NVlabs' "
                         f".pkl detector; download {INCEPTION_URL} (or pytorch-fid's {PYTORCH_FID_WEIGHTS_URL}) "
                         "and pass its path")
    archives = _archives_in_pickle(path)
    if len(archives) != 1:
        raise _refused_pickle(path, len(archives))
    return torch.jit.load(io.BytesIO(archives[0]), map_location="cpu")


def uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """images (batch, 1 or 3, H, W) in [−1, 1] → uint8 RGB in [0, 255], as saved image files hold them (grey images
    repeated over 3 channels): what the field's feature networks read."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (batch, 1 or 3, H, W), got {tuple(images.shape)}")
    finite = torch.isfinite(images).flatten(1).all(dim=1)
    if not bool(finite.all()):  # NaN would become a black pixel in the cast, Inf a saturated one: real-looking
        raise ValueError(f"images contain NaN/Inf (batch positions {(~finite).nonzero().flatten().tolist()[:10]}); "
                         f"features of such images would be scored as if they were real pixels")
    pixels = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.repeat(1, 3, 1, 1) if pixels.shape[1] == 1 else pixels


class InceptionFeatureExtractor(nn.Module):
    """images (batch, 1 or 3, H, W) in [−1, 1] → Inception pool3 features (batch, 2048).

    Images are converted to uint8 RGB in [0, 255] (grey images repeated over 3 channels), which is
    what the detector expects (the pixels of a saved PNG); it resizes to 299×299 itself.

    Args:
        weights_path: path of ``inception-2015-12-05.pkl``, of the TorchScript ``inception-2015-12-05.pt``
            (read without unpickling: see the module docstring) or of pytorch-fid's
            ``pt_inception-2015-12-05-6726825d.pth``.
    """

    def __init__(self, weights_path: str | Path):
        super().__init__()
        path = Path(weights_path) if weights_path is not None else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"weights_path {str(weights_path)!r} is not a file. FID needs the Inception detector on disk: "
                f"download {INCEPTION_URL} on a machine with internet access and pass its path; for the 8×8 "
                "digits use pynodeta.metrics.DigitsFeatureExtractor instead"
            )
        self.weights_path = str(path)  # which features these are (evaluation caches by it)
        self.detector = _load_detector(path)
        self.detector.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.detector(uint8_rgb(images), return_features=True).float()
