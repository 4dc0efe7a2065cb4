"""What ``pynodeta diagnose`` audits: a network and an input batch, from a config, a checkpoint or both.

The run is read by :func:`pynodeta.train.run_loader.load_run`, the loader (and trust policy) every
command shares: a Lightning checkpoint written by ``pynodeta fit`` is rebuilt from its config (the one
passed, else the ``config.yaml`` beside the run, else the class paths in its hyperparameters, which
must lie in pynodeta or an ``--allow-module``), read with ``weights_only=True``. With
``--unsafe-load`` only, a whole pickled ``nn.Module`` (``torch.save(model, path)``) or a dict
``{"model": nn.Module, "example_input": tensor}`` is accepted too.

The input is the first test batch of the run's DataModule, else the rows of the file's
``example_input``, else a seeded standard-normal batch of ``--input-shape``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_model_and_input", "input_batch", "DEFAULT_BATCH_SIZE"]

DEFAULT_BATCH_SIZE = 16


def load_model_and_input(
    config: str | Path | None, checkpoint: str | Path | None, *, unsafe_load: bool = False,
    allowed_modules: Iterable[str] = (),
) -> tuple[nn.Module, torch.Tensor | None]:
    """``(model, example input or None)`` of a config (the user's own), a checkpoint, or both."""
    from pynodeta.train.run_loader import build_from_config, load_run, resolve_config

    if checkpoint is None:
        module, datamodule = build_from_config(resolve_config(config))
        return module, _first_test_inputs(datamodule)
    run = load_run(checkpoint, config, allow_modules=allowed_modules, unsafe=unsafe_load)
    if run.datamodule is not None:
        return run.module, _first_test_inputs(run.datamodule)
    return run.module, run.example_input


def _first_test_inputs(datamodule) -> torch.Tensor:
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def input_batch(
    example: torch.Tensor | None,
    batch_size: int | None,
    input_shape: Sequence[int] | None,
    seed: int,
) -> torch.Tensor:
    """The batch to audit at: rows of ``example``, else a seeded N(0, 1) batch of ``input_shape``.

    batch_size None: 16 rows (all of ``example`` if it has fewer).
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
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
