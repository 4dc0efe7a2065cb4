"""``--ckpt_path`` before anything is built: check the file, resolve ``last``, resume in place.

Called by :class:`pynodeta.train.cli.PynodetaCLI` on the parsed (not yet instantiated) config of
the subcommand. A missing, truncated or garbage checkpoint is reported here as a
:class:`~pynodeta.train.safe_load.CheckpointError` instead of as a traceback from inside
``trainer.fit``; the file is read under the policy every command shares (``weights_only=True``, class
paths vetted before import), as :mod:`pynodeta.train.run_loader` states it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .model_classes import differences_from_run, model_classes
from .run_dir import RunDirectoryError, newest_last_checkpoint, run_dir_of_checkpoint
from .run_loader import find_run_config, read_run_checkpoint
from .safe_load import CheckpointError

__all__ = ["prepare_ckpt_path"]

# Lightning's ckpt_path keywords other than "last": they name a checkpoint of a fit in this same
# process, which a standalone command never has.
_IN_PROCESS_KEYWORDS = ("best", "hpc", "registry")


def prepare_ckpt_path(subcommand: str, config, unsafe: bool = False) -> int | None:
    """Check ``config.ckpt_path`` and, for ``fit``, pin the logger to the checkpoint's run folder
    (an explicit logger version is left as the user gave it).

    ``config`` is the subcommand's jsonargparse Namespace; it is edited in place. ``unsafe``: the user's
    ``--unsafe_load``, the one opt-in to full unpickling. Returns, when a
    fit resumes into an existing run folder, the number of epochs the checkpoint completed (the
    logged rows to keep), else None. Raises CheckpointError / RunDirectoryError.
    """
    ckpt_path = config.get("ckpt_path")
    if ckpt_path is None:
        return None
    ckpt_path = str(ckpt_path)
    logger = _logger_args(config)
    if ckpt_path == "last":
        if logger is None:
            raise RunDirectoryError("--ckpt_path last needs a logger with save_dir (e.g. CSVLogger) to find the "
                                    "run folders; pass the checkpoint file instead")
        ckpt_path = str(newest_last_checkpoint(Path(str(logger.get("save_dir") or ".")) /
                                               str(logger.get("name") or "")))
        config["ckpt_path"] = ckpt_path
    elif ckpt_path.split(":")[0] in _IN_PROCESS_KEYWORDS:
        raise RunDirectoryError(f"--ckpt_path {ckpt_path} refers to a checkpoint of a fit in this same process, "
                                f"which `pynodeta {subcommand}` does not have; pass the checkpoint file's path")
    state = _read_under_policy(ckpt_path, config, unsafe)
    _check_same_model(config, Path(ckpt_path))
    if subcommand != "fit" or logger is None:
        return None
    run = _stored_run_dir(state, Path(ckpt_path)) or run_dir_of_checkpoint(ckpt_path)
    if run is None:
        return None
    if logger.get("version") is not None:  # an explicit version is the user's choice of folder
        return _completed_epochs(state) if _is_logger_folder(logger, run) else None
    # The same spelling as the original run, so ModelCheckpoint recognises its dirpath and keeps
    # its best-k tracking (it compares the strings).
    logger["save_dir"], logger["name"], logger["version"] = str(run.parent.parent), run.parent.name, run.name
    return _completed_epochs(state)


def _check_same_model(config, ckpt_path: Path) -> None:
    """The config builds the classes of the checkpoint's own run (its config.yaml), where there is one: a
    DDPM run resumed under an EDM config would train its weights as an EDM model, and rewrite its folder."""
    run_config = find_run_config(ckpt_path)
    model = config.get("model")
    differences = differences_from_run(model_classes(model.as_dict() if hasattr(model, "as_dict") else model),
                                       run_config)
    if differences:
        raise CheckpointError(
            f"--ckpt_path {str(ckpt_path)!r} is a checkpoint of the run in {str(run_config.parent)!r}, whose "
            f"config.yaml builds other classes than this command's config ({'; '.join(differences)}): its weights "
            f"would be taken for another model. Resume with the run's own config: --config {str(run_config)!r}; "
            f"or start a new run without --ckpt_path")


def _is_logger_folder(logger, run: Path) -> bool:
    """Whether the logger's ``<save_dir>/<name>/<version>`` (as CSV and TensorBoard loggers name it) is ``run``."""
    version = logger.get("version")
    folder = Path(str(logger.get("save_dir") or ".")) / str(logger.get("name") or "") / (
        version if isinstance(version, str) else f"version_{version}")
    return folder.is_dir() and run.is_dir() and folder.samefile(run)


def _completed_epochs(state: dict) -> int:
    """Epochs whose training the checkpoint had finished (a resumed fit starts after them)."""
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("processed", state.get("epoch", 0)))


def _logger_args(config) -> Any:
    """The logger's init_args if it is one logger given by class_path with a save_dir, else None."""
    logger = config.get("trainer", {}).get("logger")
    init_args = getattr(logger, "init_args", None) if logger is not None else None
    return init_args if init_args is not None and "save_dir" in init_args else None


def _stored_run_dir(state: dict, ckpt_path: Path) -> Path | None:
    """The run folder as the checkpoint's ModelCheckpoint recorded it, if that is where the file is."""
    callbacks = state.get("callbacks") if isinstance(state, dict) else None
    for key, callback_state in (callbacks or {}).items():
        dirpath = callback_state.get("dirpath") if isinstance(callback_state, dict) else None
        if str(key).startswith("ModelCheckpoint") and isinstance(dirpath, str) and os.path.isdir(dirpath) \
                and os.path.samefile(dirpath, ckpt_path.parent):
            return Path(dirpath).parent
    return None


def _read_under_policy(ckpt_path: str, config, unsafe: bool) -> dict:
    """The checkpoint, read as every command reads runs (:func:`~pynodeta.train.run_loader.read_run_checkpoint`).
    LightningCLI rebuilds the model from the class paths in its hyperparameters (and imports their modules):
    they must lie in pynodeta or in a package that the user's own config's model section names."""
    model = config.get("model")
    named = _class_paths(model.as_dict() if hasattr(model, "as_dict") else model)
    allowed = sorted({path.partition(".")[0] for path in named})
    try:
        state = read_run_checkpoint(ckpt_path, unsafe=unsafe, allow_modules=allowed,
                                    how_to_allow="name a class of {module} in the config's model section")
    except ValueError as error:
        raise CheckpointError(str(error)) from error
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"--ckpt_path {ckpt_path!r} is not a Lightning checkpoint (no state_dict); pass a "
                              f"checkpoint that `pynodeta fit` wrote")
    return state


def _class_paths(tree) -> list[str]:
    if isinstance(tree, dict):
        own = [tree["class_path"]] if isinstance(tree.get("class_path"), str) else []
        return own + [p for value in tree.values() for p in _class_paths(value)]
    if isinstance(tree, (list, tuple)):
        return [p for value in tree for p in _class_paths(value)]
    return []
