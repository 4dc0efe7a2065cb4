"""Start Julia for pynodeta's ``backend="julia"`` without importing torch first.

On some platforms, loading juliacall after torch crashes the process (torch and Julia bring their own
copies of libstdc++/OpenMP; see pytorch/pytorch#78829 and PythonCall.jl's FAQ). There, start Julia
first::

    import pynodeta_julia
    pynodeta_julia.init_julia()      # before torch, pynodeta or anything that imports torch
    import torch, pynodeta

This module is top-level, outside the ``pynodeta`` package, because ``import pynodeta`` imports torch.
It imports neither. Where the order does not matter, pynodeta starts Julia itself on the first
``backend="julia"`` solve, and calling ``init_julia()`` early only moves the start-up cost (loading
Julia and the PyNoDeTa package, seconds) to a moment of your choosing.
"""

from __future__ import annotations

__all__ = ["init_julia", "add_gpu_packages", "INSTALL_HINT", "GPU_PACKAGES"]

INSTALL_HINT = (
    "backend='julia' needs juliacall and a Julia installation. Install them with\n"
    '    pip install "pynodeta[julia]"\n'
    "(a regular or an editable install: the Julia package PyNoDeTa ships inside pynodeta, at "
    "pynodeta/julia), then run once with network access: the first `import juliacall` downloads Julia "
    "(if none is on PATH) and installs the Julia packages declared in pynodeta/juliapkg.json "
    "(OrdinaryDiffEq solvers and PyNoDeTa), then precompiles them (several minutes). With "
    "PYTHON_JULIAPKG_OFFLINE=yes nothing is downloaded, so that first run must already have happened."
)

# The GPU path's Julia packages: name -> (uuid, compat). They are weak dependencies of PyNoDeTa
# (pynodeta/julia/Project.toml [weakdeps]/[compat], which a test keeps in step with this table) and are
# not installed by default, so that the CPU path never downloads or loads CUDA.jl.
GPU_PACKAGES = {
    "CUDA": ("052768ef-5323-5732-b1bb-66c8b64840ba", "5"),
    "DLPack": ("53c2dc0f-f7d5-43fd-8906-6c0220547083", "0.3"),
}

GPU_HINT = (
    "the GPU path needs the Julia packages CUDA and DLPack in juliacall's environment; add them once, "
    "with network access, by running\n"
    '    python -c "import pynodeta_julia; pynodeta_julia.add_gpu_packages()"'
)


def init_julia(gpu: bool = False):
    """Import juliacall and load the PyNoDeTa Julia package; returns the Julia module ``PyNoDeTa``.

    Args:
        gpu: also load CUDA and DLPack, which activates PyNoDeTa's GPU extension.

    Raises:
        ImportError: juliacall is missing, Julia could not start, or a Julia package failed to load; the
            message says how to install it.
    """
    try:
        import juliacall
    except ImportError as err:
        raise ImportError(f"juliacall is not installed. {INSTALL_HINT}") from err
    except Exception as err:  # juliapkg failing to find or install Julia raises plain exceptions
        raise ImportError(f"juliacall could not start Julia ({err}). {INSTALL_HINT}") from err
    try:
        juliacall.Main.seval("import PyNoDeTa")
    except Exception as err:
        raise ImportError(f"the PyNoDeTa Julia package could not be loaded ({err}). {INSTALL_HINT}") from err
    if gpu:
        try:
            juliacall.Main.seval("import CUDA, DLPack")
        except Exception as err:
            raise ImportError(f"CUDA.jl and DLPack.jl could not be loaded ({err}); {GPU_HINT}") from err
    return juliacall.Main.PyNoDeTa


def add_gpu_packages() -> None:
    """Add CUDA and DLPack (uuids and compat from ``GPU_PACKAGES``) to juliacall's environment."""
    import juliapkg

    for name, (uuid, compat) in GPU_PACKAGES.items():
        juliapkg.add(name, uuid, version=compat)
    juliapkg.resolve()
