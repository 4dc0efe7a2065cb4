"""available_backends() names only the backends that can run here; unavailable_backends() says why not."""

import importlib.util

import pynodeta.ode.backends as backends
from pynodeta.ode import available_backends, get_backend, unavailable_backends


def test_available_and_unavailable_partition_the_registry():
    available, missing = available_backends(), unavailable_backends()
    assert "torch" in available
    assert set(available).isdisjoint(missing)
    assert set(available) | set(missing) == {"torch", "scipy", "julia"}
    assert ("julia" in available) == (importlib.util.find_spec("juliacall") is not None)
    for name in available:
        if name != "julia":  # juliacall would start Julia
            get_backend(name)


def test_a_missing_requirement_is_reported_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "juliacall" else real(name))
    assert "julia" not in backends.available_backends()
    assert backends.unavailable_backends()["julia"] == (
        "needs the Python package 'juliacall', which is not installed: "
        'pip install "pynodeta[julia]" (see docs/julia.md)')
