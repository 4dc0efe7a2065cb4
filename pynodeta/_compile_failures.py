"""One wording for a failed ``torch.compile`` wherever pynodeta compiles on request (the solver's step, a
diffusion network's training forward): the option that asked for it, torch's own reason, and the way back
to the eager path, which needs no compiler."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["call_compiled"]


def call_compiled(compiled: Callable, *args, option: str, what: str, fix: str, **kwargs):
    """``compiled(*args, **kwargs)``, with a failure to compile (no C++ compiler for inductor's CPU code, an
    operation the backend cannot lower) raised as an error that names ``option``, ``what`` and ``fix``."""
    try:
        return compiled(*args, **kwargs)
    except torch._dynamo.exc.BackendCompilerFailed as error:
        raise RuntimeError(f"{option}: torch.compile could not compile {what} "
                           f"({type(error.inner_exception).__name__}: {error.inner_exception}); {fix}") from error
