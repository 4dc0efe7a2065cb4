"""What ``pynodeta diagnose`` audits: a network and an input batch, from a config or a checkpoint.

A training config (YAML with ``model:`` and ``data:`` sections, each a ``class_path`` and
``init_args`` as LightningCLI writes them) builds the LightningModule and the DataModule; the
input is the first test batch. With a Lightning checkpoint as well, its weights are loaded.

Checkpoints are read with ``torch.load(weights_only=True)`` (:func:`pynodeta.train.safe_load.read_checkpoint`),
which runs no code from the file. A whole pickled module can only be unpickled, running whatever the
file contains, with ``unsafe_load=True`` (``--unsafe-load``). Accepted contents:

* (``--unsafe-load`` only) an ``nn.Module`` (``torch.save(model, path)``): the input is a seeded
  standard-normal batch of shape ``(batch_size, *input_shape)``;
* (``--unsafe-load`` only) a dict ``{"model": nn.Module, "example_input": tensor}``
  (``example_input`` optional): the input is the first ``batch_size`` rows of ``example_input``;
* a Lightning checkpoint written by a LightningCLI run (``pynodeta fit``): the model and data come
  from the ``config.yaml`` the run saved beside its ``checkpoints/`` folder; failing that, from the
  class paths in the checkpoint's hyperparameters (``_class_path``, which LightningCLI records when
  the module saves its hyperparameters), the input then being the first test batch of the
  DataModule its ``datamodule_hyper_parameters`` name, if any. Those class paths are built only
  if they are LightningModule / LightningDataModule subclasses from pynodeta or a module passed in
  ``allowed_modules`` (``--allow-module``), see :mod:`pynodeta.diagnose.trust`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from pynodeta.train.safe_load import read_checkpoint

from .trust import check_class_paths, import_allowed_class

__all__ = ["load_checkpoint", "load_config", "input_batch", "DEFAULT_BATCH_SIZE"]

DEFAULT_BATCH_SIZE = 16


def load_checkpoint(
    path: str | Path, *, unsafe_load: bool = False, allowed_modules: Iterable[str] = ()
) -> tuple[nn.Module, torch.Tensor | None]:
    """``(model, example_input or None)`` from a file saved as described in the module docstring.

    ``unsafe_load``: unpickle whole objects (runs code from the file); ``allowed_modules``: modules
    besides pynodeta whose LightningModule / LightningDataModule classes the file may name.
    """
    path = Path(path)
    content = read_checkpoint(path, unsafe=unsafe_load)
    if isinstance(content, nn.Module):
        return content, None
    if isinstance(content, dict) and isinstance(content.get("model"), nn.Module):
        example = content.get("example_input")
        if example is not None and not isinstance(example, torch.Tensor):
            raise ValueError(f"'example_input' in {str(path)!r} must be a tensor, got {type(example).__name__}")
        return content["model"], example
    if isinstance(content, dict) and "state_dict" in content:
        return _from_lightning_checkpoint(path, content, unsafe_load, tuple(allowed_modules))
    raise ValueError(
        f"{str(path)!r} holds a {type(content).__name__}; expected an nn.Module saved with torch.save(model, "
        f"path), a dict {{'model': module, 'example_input': batch}}, or a Lightning checkpoint"
    )


def _from_lightning_checkpoint(
    path: Path, content: dict, unsafe_load: bool, allowed_modules: tuple[str, ...]
) -> tuple[nn.Module, torch.Tensor | None]:
    from lightning.pytorch import LightningDataModule, LightningModule

    hyperparameters = content.get("hyper_parameters") or {}
    model_class = hyperparameters.get("_class_path") if isinstance(hyperparameters, dict) else None
    if model_class is None:
        # LightningCLI saves the resolved config beside the run: <run>/config.yaml, <run>/checkpoints/*.ckpt
        beside = [d / "config.yaml" for d in (path.parent, path.parent.parent) if (d / "config.yaml").is_file()]
        if beside:
            # not named by the user: its class paths are vetted like the checkpoint's
            return load_config(beside[0], path, unsafe_load=unsafe_load, allowed_modules=allowed_modules)
        raise ValueError(f"the Lightning checkpoint {str(path)!r} does not name its model class and has no "
                         f"config.yaml beside it; pass the training config as well: "
                         f"--config CONFIG.yaml --checkpoint {path}")
    data = content.get("datamodule_hyper_parameters") or {}
    # Every class path is vetted before any is imported or called.
    check_class_paths(hyperparameters, allowed_modules, f"the checkpoint {str(path)!r} (hyper_parameters)")
    check_class_paths(data, allowed_modules, f"the checkpoint {str(path)!r} (datamodule_hyper_parameters)")
    model_type = import_allowed_class(model_class, LightningModule, allowed_modules,
                                      f"the checkpoint {str(path)!r} (hyper_parameters)")
    data_type = None
    if isinstance(data, dict) and "_class_path" in data:
        data_type = import_allowed_class(data["_class_path"], LightningDataModule, allowed_modules,
                                         f"the checkpoint {str(path)!r} (datamodule_hyper_parameters)")
    model = model_type.load_from_checkpoint(path, map_location="cpu", weights_only=not unsafe_load)
    if data_type is None:
        return model, None
    datamodule = data_type(**{k: v for k, v in data.items() if not k.startswith("_")})
    return model, _first_test_inputs(datamodule)


def _first_test_inputs(datamodule) -> torch.Tensor:
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def load_config(
    config: str | Path,
    checkpoint: str | Path | None = None,
    *,
    unsafe_load: bool = False,
    allowed_modules: Iterable[str] | None = None,
) -> tuple[nn.Module, torch.Tensor]:
    """``(LightningModule, first test batch's inputs)`` built from a training config.

    ``config`` is a YAML file or the name of a config shipped with pynodeta (``digits_tabn``, as
    ``pynodeta fit --config`` takes it). Only the ``model:`` and ``data:`` sections are read
    (``trainer:``, optimiser and the rest do not matter to an audit); each names its class by
    ``class_path`` (a LightningModule, a LightningDataModule) with ``init_args``, checked against the
    class signature by jsonargparse as LightningCLI does. The model's initial weights are drawn with
    the config's ``seed_everything`` (the global RNG is left as it was). ``checkpoint``, if given,
    is a Lightning checkpoint whose ``state_dict`` is loaded into the model (read with
    ``weights_only=True`` unless ``unsafe_load``). ``allowed_modules`` None: the config is the
    user's own and trusted; else its class paths must lie in pynodeta or these modules.
    """
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule, LightningModule

    # the checkpoint first: a bad file is reported before any building work
    state = None if checkpoint is None else read_checkpoint(checkpoint, unsafe=unsafe_load)
    if state is not None and (not isinstance(state, dict) or "state_dict" not in state):
        raise ValueError(f"{str(checkpoint)!r} is not a Lightning checkpoint (no 'state_dict')")
    content = _config_content(_config_path(config), yaml)
    if allowed_modules is not None:
        check_class_paths({"model": content["model"], "data": content["data"]}, allowed_modules,
                          f"the config {str(config)!r} found beside the checkpoint")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    # ``instantiate`` replaced ``instantiate_classes`` in jsonargparse 4.49
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    seed = content.get("seed_everything")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed if isinstance(seed, int) and not isinstance(seed, bool) else 0)
            built = instantiate(parser.parse_object({"model": content["model"], "data": content["data"]}))
    except Exception as error:  # noqa: BLE001 - jsonargparse and constructors report bad configs this way
        raise ValueError(f"config {str(config)!r}: {error}") from error
    model, datamodule = built.model, built.data
    if state is not None:
        model.load_state_dict(state["state_dict"])
    return model, _first_test_inputs(datamodule)


def _config_path(config: str | Path) -> Path:
    path = Path(config)
    if path.is_file():
        return path
    if path.suffix or len(path.parts) > 1:
        raise ValueError(f"config {str(config)!r} does not exist or is not a file")
    from pynodeta.train.configs import shipped_config_path  # a bare name: a shipped config

    return shipped_config_path(str(config))


def _config_content(path: Path, yaml) -> dict:
    content = yaml.safe_load(path.read_text())
    missing = [k for k in ("model", "data") if not isinstance(content, dict) or k not in content]
    if missing:
        raise ValueError(f"config {str(path)!r} has no {' and no '.join(missing)} section; "
                         f"expected a training config with model: and data:")
    return content


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
