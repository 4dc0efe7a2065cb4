"""What ``pynodeta diagnose`` audits: a network and its inputs for one batch, from a config, a checkpoint or both.

The run is read by :func:`pynodeta.train.run_loader.load_run`, the loader (and trust policy) every
command shares: a Lightning checkpoint written by ``pynodeta fit`` is rebuilt from its config (the one
passed, else the ``config.yaml`` beside the run, else the class paths in its hyperparameters, which
must lie in pynodeta or an ``--allow-module``), read with ``weights_only=True``. With
``--unsafe-load`` only, a whole pickled ``nn.Module`` (``torch.save(model, path)``) or a dict
``{"model": nn.Module, "example_input": tensor}`` is accepted too.

The batch is the first samples of the run's test split, passed to the network as its LightningModule's
training steps pass a batch (:func:`network_inputs`); else the rows of the file's ``example_input``,
else a seeded standard-normal batch of ``--input-shape``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Sized
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["load_model_and_inputs", "network_inputs", "first_test_batch", "input_batch", "DEFAULT_BATCH_SIZE"]

DEFAULT_BATCH_SIZE = 16


def load_model_and_inputs(
    config: str | Path | None, checkpoint: str | Path | None, *, batch_size: int | None = None,
    input_shape: Sequence[int] | None = None, seed: int = 0, unsafe_load: bool = False,
    allowed_modules: Iterable[str] = (),
) -> tuple[nn.Module, tuple[Any, ...]]:
    """``(model, inputs)``: the model of a config (the user's own), a checkpoint, or both, and the positional
    inputs of its network for one batch of ``batch_size`` samples (``network(*inputs)``)."""
    from pynodeta.train.run_loader import build_from_config, load_run, resolve_config

    if checkpoint is None:
        (module, datamodule), example = build_from_config(resolve_config(config)), None
    else:
        run = load_run(checkpoint, config, allow_modules=allowed_modules, unsafe=unsafe_load)
        module, datamodule, example = run.module, run.datamodule, run.example_input
    if datamodule is None:
        return module, (input_batch(example, batch_size, input_shape, seed),)
    if input_shape is not None:
        raise ValueError("--input-shape conflicts with the run's data section, which gives the input; drop it")
    return module, network_inputs(module, first_test_batch(datamodule, batch_size))


def network_inputs(module: nn.Module, batch: Any) -> tuple[Any, ...]:
    """The positional inputs of ``module``'s network for a data ``batch``, as its training steps pass them:
    ``module.model_inputs(batch)`` where the LightningModule defines it (a trajectory regressor's network
    takes ``(t0, y0, t_grid)``), else the batch's first element (the images of an ``(x, y)`` batch)."""
    model_inputs = getattr(module, "model_inputs", None)
    if callable(model_inputs):
        return tuple(model_inputs(batch))
    return (batch[0] if isinstance(batch, (tuple, list)) else batch,)


def first_test_batch(datamodule, batch_size: int | None) -> Any:
    """The first ``batch_size`` samples of the test split (default 16, or the whole split if smaller),
    collated as its test loader collates them, whatever that loader's own batch size."""
    _check_batch_size(batch_size)
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    if not isinstance(loader, DataLoader):
        raise ValueError(f"{type(datamodule).__name__}.test_dataloader() returned a {type(loader).__name__}; "
                         f"the audit takes its batch from one torch DataLoader")
    samples = len(loader.dataset) if isinstance(loader.dataset, Sized) else None
    if batch_size is not None and samples is not None and batch_size > samples:
        raise ValueError(f"--batch-size {batch_size} exceeds the {samples} samples of the test split")
    first = DataLoader(loader.dataset, batch_size=batch_size or DEFAULT_BATCH_SIZE, collate_fn=loader.collate_fn)
    batch = next(iter(first), None)
    if batch is None:
        raise ValueError(f"the test split of {type(datamodule).__name__} is empty: the audit needs one batch")
    return batch


def input_batch(
    example: torch.Tensor | None,
    batch_size: int | None,
    input_shape: Sequence[int] | None,
    seed: int,
) -> torch.Tensor:
    """The batch to audit at: rows of ``example``, else a seeded N(0, 1) batch of ``input_shape``.

    batch_size None: 16 rows (all of ``example`` if it has fewer).
    """
    _check_batch_size(batch_size)
    if example is not None:
        if input_shape is not None:
            raise ValueError("--input-shape conflicts with the checkpoint's example_input; drop it")
        if batch_size is not None and batch_size > example.shape[0]:
            raise ValueError(f"--batch-size {batch_size} exceeds the {example.shape[0]} rows of the "
                             f"checkpoint's example_input")
        return example[: DEFAULT_BATCH_SIZE if batch_size is None else batch_size]
    if input_shape is None:
        raise ValueError("the checkpoint holds no example input: pass --input-shape (e.g. --input-shape 1 8 8) "
                         "for a seeded standard-normal batch")
    if any(n < 1 for n in input_shape):
        raise ValueError(f"--input-shape must be positive sizes, got {list(input_shape)}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size or DEFAULT_BATCH_SIZE, *input_shape, generator=generator)


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
