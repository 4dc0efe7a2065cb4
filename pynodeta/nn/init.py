"""Bias-initialisation policy of "The Disappearance of Timestep Embedding" (Kim et al. 2024): zero bias in the
operand branch, default in the timestep branch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["apply_bias_init_policy", "is_timestep_branch"]

_OPERAND_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.ConvTranspose3d)


def is_timestep_branch(module: nn.Module) -> bool:
    """True if ``module`` (with everything inside it) is in the timestep branch: ``timestep_branch = True``.

    pynodeta's embeddings (``TimestepEmbedding``, ``LinearTimestepEmbedding``,
    ``SinusoidalTimestepEmbedding``, ``PositionalTimestepEmbedding``) do; set the attribute on your
    own modules that compute from t only.
    """
    return bool(getattr(module, "timestep_branch", False))


@torch.no_grad()
def apply_bias_init_policy(
    model: nn.Module,
    timestep_branch: Callable[[str, nn.Module], bool] | None = None,
) -> dict[str, list[str]]:
    """Zero the bias of every operand-branch Linear/Conv; keep the timestep branch's default biases.

    Operand branch: every ``nn.Linear``/``nn.Conv*``/``nn.ConvTranspose*`` (including the conv inside
    ``ConcatConv2d``) that is not inside a timestep-branch module. Timestep branch: modules for which
    ``timestep_branch(name, module)`` is true (default: ``is_timestep_branch``), with all their
    descendants. Normalisation parameters are not touched.

    Returns {"zeroed": names of biases set to 0, "kept": timestep-branch bias names left as they were}.
    """
    predicate = timestep_branch or (lambda name, module: is_timestep_branch(module))
    branch_prefixes = [name for name, m in model.named_modules() if predicate(name, m)]

    def in_branch(name: str) -> bool:
        return any(p == "" or name == p or name.startswith(p + ".") for p in branch_prefixes)

    report: dict[str, list[str]] = {"zeroed": [], "kept": []}
    for name, module in model.named_modules():
        if not isinstance(module, _OPERAND_TYPES) or module.bias is None:
            continue
        bias_name = f"{name}.bias" if name else "bias"
        if in_branch(name):
            report["kept"].append(bias_name)
        else:
            module.bias.zero_()
            report["zeroed"].append(bias_name)
    return report
