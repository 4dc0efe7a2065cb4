"""A restricted unpickler for the CIFAR "python version" batch files.

Plain ``pickle.load`` calls whatever importable function a file names, so a tampered batch file
runs code. A CIFAR batch is a dict of byte strings, lists of ints and one uint8 numpy array; its
pickle names only numpy's array reconstruction (``_reconstruct``, ``ndarray``, ``dtype``) and, when
written by Python 3 with protocol 2, ``_codecs.encode`` for byte strings. Only those are admitted;
any other global stops the load before anything is called.
"""

from __future__ import annotations

import codecs
import pickle
from typing import Any, BinaryIO

import numpy as np

__all__ = ["CIFAR_PICKLE_GLOBALS", "RefusedPickleGlobal", "load_restricted"]

CIFAR_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),   # written by numpy < 2 (the published files)
    ("numpy._core.multiarray", "_reconstruct"),  # written by numpy >= 2
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),                       # bytes in a Python 3 protocol-2 pickle
})


class RefusedPickleGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the admitted set."""


def _numpy_reconstruct():
    try:  # numpy >= 2 moved numpy.core to numpy._core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise RefusedPickleGlobal(f"{module}.{name}")
        # resolved here, not by import: an admitted name must not import anything else
        return {"_reconstruct": _numpy_reconstruct, "ndarray": lambda: np.ndarray, "dtype": lambda: np.dtype,
                "encode": lambda: codecs.encode}[name]()


def load_restricted(file: BinaryIO) -> Any:
    """Unpickle ``file`` (a Python 2 pickle: ``encoding="bytes"``) admitting only CIFAR's globals."""
    return _RestrictedUnpickler(file, encoding="bytes").load()
