"""Reading checkpoint files without running code from them.

``torch.load(weights_only=False)`` unpickles arbitrary Python objects, and unpickling can call any
importable function (``os.system`` included): a checkpoint from an untrusted source is a program.
:func:`read_checkpoint` loads with ``weights_only=True``, PyTorch's restricted unpickler, which
admits tensors, storages and plain containers/numbers/strings only. That is everything a
``pynodeta fit`` checkpoint holds (weights, optimiser and scheduler states, loop counters,
callback states, the RNG states of :mod:`pynodeta.train.rng`, plain-dict hyperparameters).

A whole pickled ``nn.Module`` (``torch.save(model, path)``) cannot be read that way: it needs
``unsafe=True``, which the command line only sets on an explicit ``--unsafe-load``.
Every failure - missing, truncated, garbage, refused - raises :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "read_checkpoint", "check_checkpoint_file", "UNSAFE_LOAD_WARNING"]

UNSAFE_LOAD_WARNING = ("--unsafe-load: unpickling {path!r} with torch.load(weights_only=False) can run any code "
                       "the file contains; use it only on files you made or fully trust")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, corrupt, or holds objects a safe load refuses."""


def check_checkpoint_file(path: str | Path) -> Path:
    """``path`` as a Path if it names an existing, non-empty file; else :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes); expected a torch.save file")
    return path


def read_checkpoint(path: str | Path, *, unsafe: bool = False) -> Any:
    """The object ``torch.save`` wrote to ``path``, loaded on the CPU.

    ``unsafe=False`` (default): ``weights_only=True``; a file holding pickled Python objects other
    than tensors and plain containers is refused with a message naming the first such object.
    ``unsafe=True``: full unpickling, after a :class:`UserWarning` saying it can run code.
    """
    path = check_checkpoint_file(path)
    if unsafe:
        warnings.warn(UNSAFE_LOAD_WARNING.format(path=str(path)), UserWarning, stacklevel=2)
    try:
        return torch.load(path, map_location="cpu", weights_only=not unsafe)
    except pickle.UnpicklingError as error:
        # torch words the refusal differently across versions ("Unsupported global: GLOBAL os.system ...",
        # "unsupported GLOBAL posix.system whose module posix is blocked"); both name the GLOBAL.
        refused = re.search(r"GLOBAL\s+([\w.]+)", str(error), flags=re.IGNORECASE)
        if refused is None:  # a bad opcode: garbage, not a hostile object
            raise _unreadable(path, error) from error
        raise CheckpointError(
            f"refused to load checkpoint {str(path)!r} as unsafe: it holds the pickled Python object "
            f"{refused.group(1)}, and unpickling it could run code from the file. If you made the file or fully "
            f"trust it, opt in with --unsafe-load (a whole saved nn.Module needs it)"
        ) from error
    except Exception as error:  # noqa: BLE001 - zip, pickle and EOF errors all mean a corrupt file
        raise _unreadable(path, error) from error


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # torch's weights-only errors open with advice to set weights_only=False; the cause comes after
    after = [i + 1 for i, line in enumerate(lines) if "WeightsUnpickler error" in line and i + 1 < len(lines)]
    first_line = lines[after[0]] if after else lines[0] if lines else "no detail"
    return CheckpointError(f"could not read checkpoint {str(path)!r}: it is truncated or not a torch.save "
                           f"file ({type(error).__name__}: {first_line})")
