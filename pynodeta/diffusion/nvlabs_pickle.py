"""Reading NVlabs' network pickles (EDM2's ``edm2-img512-*.pkl``, its training snapshots) without running them.

NVlabs pickles their networks through ``torch_utils.persistence``: every decorated object is stored as a
call ``_reconstruct_persistent_obj(meta)`` whose ``meta`` holds the class name, the *source text of the
class's whole module* and the object's ``__dict__``; plain ``pickle.load`` would ``exec`` that source.
Here the call is answered with a :class:`PersistentObject` that keeps ``meta`` as plain data: the source
is kept as a string and never executed, compiled or imported.

Besides that call, only the globals a network's state needs are admitted (:data:`NVLABS_PICKLE_GLOBALS`):
tensor and parameter rebuilding, storages (pickled as ``torch.save`` bytes, read back with
``torch.load(weights_only=True)``), ``OrderedDict``, ``torch.nn.ModuleDict`` and ``dnnlib``'s ``EasyDict``
(both rebuilt as plain containers of their state), numpy arrays (the latent encoder's scale and bias).
Any other global stops the load before anything is called.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import torch

from pynodeta.data.safe_pickle import RefusedPickleGlobal, _numpy_reconstruct

__all__ = ["NVLABS_PICKLE_GLOBALS", "PersistentObject", "load_nvlabs_pickle", "module_tensors"]


@dataclass
class PersistentObject:
    """A ``torch_utils.persistence`` object as data: what NVlabs' code would have rebuilt, never run."""

    class_name: str                                   # e.g. "Precond", "UNet", "MPConv", "StabilityVAEEncoder"
    module_src: str = field(repr=False)               # the pickled module's source text; never executed
    state: dict                                       # the object's __dict__ (a module's _parameters, _modules, ...)
    version: int | None = None                        # torch_utils.persistence's format version (6 for EDM2)

    @property
    def init_args(self) -> tuple:
        """The positional arguments the object was built with (``persistent_class`` records them)."""
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict:
        """The keyword arguments the object was built with."""
        return dict(self.state.get("_init_kwargs") or {})


class PlainModuleContainer:
    """A pickled ``torch.nn.ModuleDict`` as its ``__dict__`` state (``.state``): no torch class is rebuilt."""

    def __setstate__(self, state: dict) -> None:
        self.state = state


class PlainDict(dict):
    """``dnnlib.EasyDict`` as a plain dict (its keys are its items; an attribute state, if any, is merged)."""

    def __setstate__(self, state) -> None:
        if isinstance(state, dict):
            self.update(state)


def _reconstruct_persistent_obj(meta: dict) -> PersistentObject:
    """Stands in for ``torch_utils.persistence._reconstruct_persistent_obj``: keeps ``meta``, runs nothing."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError(f"a persistent object's meta must be a dict with type 'class' and a class_name, "
                                     f"got {type(meta).__name__}")
    state = meta.get("state")
    return PersistentObject(meta["class_name"], str(meta.get("module_src", "")), dict(state) if state else {},
                            meta.get("version"))


def _load_storage_from_bytes(data: bytes):
    """Stands in for ``torch.storage._load_from_bytes``: the storage's ``torch.save`` bytes, read safely."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    # torch's own rebuild, without backward hooks (a pickle has no business installing any)
    if backward_hooks:
        raise pickle.UnpicklingError("a pickled tensor carries backward hooks; refusing to install them")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                           collections.OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks=None):
    if backward_hooks:
        raise pickle.UnpicklingError("a pickled parameter carries backward hooks; refusing to install them")
    return torch.nn.Parameter(data, requires_grad)


def _admitted() -> dict[tuple[str, str], Any]:
    import numpy as np

    return {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.nn.modules.container", "ModuleDict"): PlainModuleContainer,
        ("dnnlib.util", "EasyDict"): PlainDict,
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


NVLABS_PICKLE_GLOBALS = frozenset(_admitted())


class _NVlabsUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self._globals = _admitted()

    def find_class(self, module: str, name: str) -> Any:
        found = self._globals.get((module, name))
        if found is None:
            raise RefusedPickleGlobal(f"{module}.{name} is not among the globals an NVlabs network pickle needs "
                                      f"(persistent objects, tensors, storages, containers); refusing to load it")
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"persistent id {pid!r}: this is a torch.save file, not an NVlabs pickle; "
                                     f"read it with torch.load(weights_only=True)")


def load_nvlabs_pickle(file: BinaryIO) -> Any:
    """The content of an NVlabs pickle, persistent objects as :class:`PersistentObject`; nothing is executed.

    Raises :class:`~pynodeta.data.safe_pickle.RefusedPickleGlobal` for any global outside
    :data:`NVLABS_PICKLE_GLOBALS`."""
    return _NVlabsUnpickler(file).load()


def module_tensors(obj: PersistentObject | PlainModuleContainer, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state_dict of a pickled module tree: its parameters and persistent buffers, named as torch names them."""
    state = obj.state
    found: dict[str, torch.Tensor] = {}
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            found[prefix + name] = value
    skipped = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skipped:
            found[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, (PersistentObject, PlainModuleContainer)):
            raise ValueError(f"the pickled module {prefix + name!r} is a {type(child).__name__}, not a module this "
                             f"reader knows (a persistent NVlabs class or a ModuleDict)")
        found.update(module_tensors(child, f"{prefix}{name}."))
    return found
