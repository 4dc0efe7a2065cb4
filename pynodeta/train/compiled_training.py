"""The network's training forward through ``torch.compile``: ``DiffusionModule(compile_training=…)``.

Only the training loss's calls go through the compiled network. Evaluation, sampling and the weight
averages call the eager module, so switching to eval mode or to a sampler's batch size never recompiles,
and the compiled wrapper never enters a state dict or a checkpoint (it holds no state of its own: its
parameters are the network's).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pynodeta._compile_failures import call_compiled

__all__ = ["CompiledTraining", "check_compile_training"]

# The last batch of an epoch is usually smaller (1257 digits in batches of 64 leave 41): with static
# shapes that second size compiles the network a second time, as long as the first; a batch dimension
# compiled as dynamic from the start costs one compilation and ran the digits U-Net as fast (0.71x the
# eager step either way, 2 threads).
DEFAULT_OPTIONS = {"dynamic": True}
_ALLOWED = frozenset({"backend", "mode", "dynamic", "fullgraph", "options"})


def check_compile_training(value: bool | dict | None) -> dict | None:
    """``torch.compile``'s options for the training forward, or None to train eagerly."""
    if value is None or value is False:
        return None
    if value is True:
        return dict(DEFAULT_OPTIONS)
    if isinstance(value, dict):
        unknown = sorted(set(value) - _ALLOWED)
        if unknown:
            raise ValueError(f"compile_training takes torch.compile's options {sorted(_ALLOWED)}, got {unknown}")
        return {**DEFAULT_OPTIONS, **value}
    raise TypeError("compile_training must be true, false or a dict of torch.compile options "
                    f"(e.g. {{'mode': 'max-autotune'}}), got {type(value).__name__}")


class CompiledTraining:
    """``torch.compile(network, **options)``, built at the first training call and kept out of copies.

    Not an ``nn.Module`` on purpose: as a submodule it would put the network's parameters into the state dict
    a second time under ``_orig_mod.``, and deep copies of the training module (a weight average's copy, say)
    would try to copy compiled code.
    """

    def __init__(self, options: dict):
        self.options = options
        self._view: _NamedFailures | None = None
        self._network: nn.Module | None = None

    def __call__(self, network: nn.Module) -> nn.Module:
        """The compiled view of ``network`` (rebuilt if it is another network)."""
        if self._network is not network:
            self._view = _NamedFailures(torch.compile(network, **self.options), self.options)
            self._network = network
        return self._view

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles start uncompiled
        return {"options": self.options, "_view": None, "_network": None}


class _NamedFailures(nn.Module):
    """Calls the compiled network; a failure to compile names the option, since eager training needs no
    compiler."""

    def __init__(self, compiled: nn.Module, options: dict):
        super().__init__()
        object.__setattr__(self, "compiled", compiled)  # not a submodule: no second copy of the parameters
        object.__setattr__(self, "compile_options", options)

    def forward(self, *args, **kwargs):
        return call_compiled(self.compiled, *args, **kwargs, option=f"compile_training={self.compile_options}",
                             what="the network for training",
                             fix="set compile_training: false to train eagerly, or pass other torch.compile "
                                 "options (e.g. {'dynamic': False})")

    def __getattr__(self, name: str):
        # objectives read the network's attributes (its label dimension, its noise range) through this view
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.compiled, name)
