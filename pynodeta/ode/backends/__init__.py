"""Solver backends, looked up by name. Heavy ones are imported only when first asked for."""

from __future__ import annotations

import importlib
import importlib.util

from .base import RHS, Backend, SolverConfig

__all__ = ["Backend", "SolverConfig", "RHS", "get_backend", "available_backends", "unavailable_backends"]

# name -> "module:class"; imported lazily so that `import pynodeta` never loads scipy or Julia.
_REGISTRY = {
    "torch": "pynodeta.ode.backends.native:TorchBackend",
    "scipy": "pynodeta.ode.backends.scipy:ScipyBackend",
    "julia": "pynodeta.ode.backends.julia:JuliaBackend",
}
_instances: dict[str, Backend] = {}


# name -> (the importable module a backend needs beyond torch, how to install it).
_REQUIREMENTS = {
    "scipy": ("scipy", "pip install scipy"),
    "julia": ("juliacall", 'pip install "pynodeta[julia]" (see docs/julia.md)'),
}


def unavailable_backends() -> dict[str, str]:
    """{name: why it cannot run here} for every registered backend that cannot, e.g. ``julia`` without juliacall.

    Only checks that the backend's Python requirement is installed, without importing it: juliacall
    still starts (and, the first time, may install) Julia on the first ``backend="julia"`` solve.
    """
    missing = {}
    for name in _REGISTRY:
        requirement, hint = _REQUIREMENTS.get(name, (None, ""))
        if requirement is not None and importlib.util.find_spec(requirement) is None:
            missing[name] = f"needs the Python package {requirement!r}, which is not installed: {hint}"
    return missing


def available_backends() -> tuple[str, ...]:
    """The names of the registered backends that can run here (see ``unavailable_backends`` for the others)."""
    missing = unavailable_backends()
    return tuple(name for name in _REGISTRY if name not in missing)


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
