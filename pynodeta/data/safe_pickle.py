"""Restricted unpicklers for numpy-only pickles: the CIFAR "python version" batch files, edm2's dataset-refs.

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

__all__ = ["CIFAR_PICKLE_GLOBALS", "NUMPY_ARRAY_GLOBALS", "RefusedPickleGlobal", "load_restricted"]

CIFAR_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),   # written by numpy < 2 (the published files)
    ("numpy._core.multiarray", "_reconstruct"),  # written by numpy >= 2
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),                       # bytes in a Python 3 protocol-2 pickle
})


# any pickled numpy array: CIFAR's globals and the buffer-based rebuild newer numpy pickles use (edm2's dataset-refs)
NUMPY_ARRAY_GLOBALS = CIFAR_PICKLE_GLOBALS | frozenset({
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
})


class RefusedPickleGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the admitted set."""


def _numpy_reconstruct():
    try:  # numpy >= 2 moved numpy.core to numpy._core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core.numeric import _frombuffer
    return _frombuffer


# resolved here, not by import: an admitted name must not import anything else
_RESOLVE = {"_reconstruct": _numpy_reconstruct, "_frombuffer": _numpy_frombuffer, "ndarray": lambda: np.ndarray,
            "dtype": lambda: np.dtype, "encode": lambda: codecs.encode}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, admitted: frozenset, encoding: str):
        super().__init__(file, encoding=encoding)
        self.admitted = admitted

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.admitted:
            raise RefusedPickleGlobal(f"{module}.{name}")
        return _RESOLVE[name]()


def load_restricted(file: BinaryIO, admitted: frozenset = CIFAR_PICKLE_GLOBALS, encoding: str = "bytes") -> Any:
    """Unpickle ``file`` admitting only the globals in ``admitted`` (default: CIFAR's, a Python 2 pickle read with
    ``encoding="bytes"``; :data:`NUMPY_ARRAY_GLOBALS` for any pickled numpy array)."""
    return _RestrictedUnpickler(file, admitted, encoding).load()
