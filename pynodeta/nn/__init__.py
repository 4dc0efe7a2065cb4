"""Time-aware layers. Convention: a time-aware module's forward is ``forward(t, x)``.

``t`` is a Python float, a 0-d tensor, or (where a layer's docstring says so) a (batch,) tensor
of per-sample times. Containers (``TimeSequential``) pass ``t`` to the children that take it.
Inside a U-Net a shared timestep embedding may be passed to the blocks instead (see ``time.py``);
the network's own boundary stays ``forward(t, x)``.
"""

from .concat import ConcatConv2d, ConcatLinear
from .embeddings import (
    LinearTimestepEmbedding,
    PositionalTimestepEmbedding,
    SinusoidalTimestepEmbedding,
    TimestepEmbedding,
    sinusoidal_timestep_embedding,
)
from .init import apply_bias_init_policy, is_timestep_branch
from .norms import (
    NORM_KINDS,
    MiniBatchNorm1d,
    MiniBatchNorm2d,
    PopTIBatchNorm1d,
    PopTIBatchNorm2d,
    TimeGroupNorm,
    TimeIdentity,
    TimeInstanceNorm1d,
    TimeInstanceNorm2d,
    group_count,
    make_norm,
)
from .stat_updates import backward_solve, no_stat_updates
from .tabn import TABatchNorm, TABatchNorm1d, TABatchNorm2d, grid_weights, tabn_regularizer
from .time import TimeSequential, call_with_time, is_time_aware, time_as_tensor
from .time_cancellation import TimeCancellationWarning

__all__ = [
    "TimeSequential",
    "call_with_time",
    "is_time_aware",
    "time_as_tensor",
    "ConcatConv2d",
    "ConcatLinear",
    "sinusoidal_timestep_embedding",
    "TimestepEmbedding",
    "LinearTimestepEmbedding",
    "SinusoidalTimestepEmbedding",
    "PositionalTimestepEmbedding",
    "apply_bias_init_policy",
    "is_timestep_branch",
    "NORM_KINDS",
    "make_norm",
    "group_count",
    "TABatchNorm",
    "TABatchNorm1d",
    "TABatchNorm2d",
    "grid_weights",
    "tabn_regularizer",
    "PopTIBatchNorm1d",
    "PopTIBatchNorm2d",
    "MiniBatchNorm1d",
    "MiniBatchNorm2d",
    "TimeGroupNorm",
    "TimeInstanceNorm1d",
    "TimeInstanceNorm2d",
    "TimeIdentity",
    "no_stat_updates",
    "backward_solve",
    "TimeCancellationWarning",
]
