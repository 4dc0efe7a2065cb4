"""Solver backends, looked up by name. Heavy ones are imported only when first asked for."""

from __future__ import annotations

import importlib

from .base import RHS, Backend, SolverConfig

__all__ = ["Backend", "SolverConfig", "RHS", "get_backend", "available_backends"]

# name -> "module:class"; imported lazily so that `import pynodeta` never loads scipy or Julia.
_REGISTRY = {
    "torch": "pynodeta.ode.backends.native:TorchBackend",
    "scipy": "pynodeta.ode.backends.scipy:ScipyBackend",
    "julia": "pynodeta.ode.backends.julia:JuliaBackend",
}
_instances: dict[str, Backend] = {}


def available_backends() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_backend(name: str | Backend) -> Backend:
    """Return the backend called ``name`` (or ``name`` itself if it already is a Backend)."""
    if isinstance(name, Backend):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_REGISTRY)} or pass a Backend instance")
    if name not in _instances:
        module_name, class_name = _REGISTRY[name].split(":")
        _instances[name] = getattr(importlib.import_module(module_name), class_name)()
    return _instances[name]
