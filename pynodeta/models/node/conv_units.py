"""The convolution unit every derivative backbone is built of: [ConcatConv -> norm (-> activation)].

↓ is a stride-2 3×3 conv, ↑ a stride-2 3×3 transposed conv whose output padding is chosen from the
target size so that the output has exactly the matching down path's spatial size.
"""

from __future__ import annotations

from ...nn import ConcatConv2d, TimeSequential
from ..common import NormFactory, make_activation

__all__ = ["down_size", "conv_unit"]


def down_size(size: int) -> int:
    """Spatial size after a 3×3, stride-2, padding-1 conv: ceil(size / 2)."""
    return (size + 1) // 2


def conv_unit(in_ch: int, out_ch: int, size: tuple[int, int], move: str, norm: NormFactory,
              activation: str | None) -> tuple[TimeSequential, tuple[int, int]]:
    """[ConcatConv -> norm (-> activation)] with ``move`` in "down", "same", "up"; returns (unit, out size).

    For "up", ``size`` is the target size (the matching down path's input).
    """
    if move == "up":
        padding = tuple(1 - s % 2 for s in size)  # 2·ceil(s/2) - 1 + p = s
        conv = ConcatConv2d(in_ch, out_ch, 3, stride=2, padding=1, transpose=True,
                            output_padding=padding if padding[0] != padding[1] else padding[0])
        out = size
    else:
        stride = 2 if move == "down" else 1
        conv = ConcatConv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        out = tuple(down_size(s) for s in size) if move == "down" else size
    layers = [conv, norm(out_ch)]
    if activation is not None:
        layers.append(make_activation(activation))
    return TimeSequential(*layers), out
