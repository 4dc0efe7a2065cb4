"""The ``pynodeta`` training command: LightningCLI with pynodeta's modules, configs and run summary.

    pynodeta fit --config digits_tabn                 # a shipped config, by name
    pynodeta fit --config my.yaml --trainer.max_epochs 5
    pynodeta fit --config digits_tabn --ckpt_path runs/.../last.ckpt   # resume exactly
    pynodeta test --config runs/.../config.yaml --ckpt_path runs/.../best.ckpt
    pynodeta fit --config digits_tabn --print_config  # the resolved, typed configuration

Every class in a config is given by ``class_path``/``init_args`` and checked by jsonargparse
before anything is built; constructors validate their arguments, so a typo or a bad value stops
the run before training starts, with the message printed as ``pynodeta: error: ...``.
"""

from __future__ import annotations

import sys
import time
import warnings

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from .checkpoint_io import AtomicCheckpointIO
from .configs import resolve_config_args
from .summary import RunSummary

__all__ = ["main", "PynodetaCLI", "ConfigurationError"]


class ConfigurationError(Exception):
    """A config that parses but cannot be built (a bad value, missing data); raised before training."""


def _root_cause(error: BaseException) -> BaseException:
    # jsonargparse re-raises a constructor's error as "Does not validate against any of the Union
    # subtypes ..."; the constructor's own message, at the end of the chain, is the one that helps.
    while (cause := error.__cause__ or error.__context__) is not None:
        error = cause
    return error


class PynodetaCLI(LightningCLI):
    """LightningCLI with pynodeta's extras.

    Extra options: ``--num_threads N`` (``torch.set_num_threads`` for this run; default: torch's),
    ``--test_after_fit true`` (``fit`` then evaluates the final weights on the test set and prints
    a one-line summary with test accuracy and NFE). Checkpoints are written atomically
    (:class:`AtomicCheckpointIO`) unless the config names another CheckpointIO plugin.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--num_threads", type=int | None, default=None,
                            help="torch.set_num_threads for this run (e.g. 2 on a 2-core machine)")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, test the final weights and print a summary line")

    def before_instantiate_classes(self) -> None:
        threads = self._get(self.config, "num_threads")
        if threads is not None:
            if threads < 1:
                raise ConfigurationError(f"num_threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
            raise ConfigurationError(str(_root_cause(error))) from error
        check_files = getattr(self.datamodule, "check_files", None)
        if callable(check_files):  # a missing dataset is reported now, not after setup work
            try:
                check_files()
            except FileNotFoundError as error:
                raise ConfigurationError(str(error)) from error

    def _instantiate_trainer(self, config: dict, callbacks: list):
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        return super()._instantiate_trainer(config, callbacks)

    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit"):
            return
        fit_metrics = dict(self.trainer.callback_metrics)
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        RunSummary.from_metrics(fit_metrics, self.trainer.callback_metrics).report(self.trainer)

    def after_test(self) -> None:
        RunSummary.from_metrics({}, self.trainer.callback_metrics).report(self.trainer)


def main(argv: list[str] | None = None) -> int | None:
    """Entry point of ``pynodeta fit|validate|test|predict ...``; returns the exit status."""
    started = time.perf_counter()
    try:
        argv = resolve_config_args(list(sys.argv[1:] if argv is None else argv))
    except ValueError as error:
        print(f"pynodeta: error: {error}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            # `args` is how pynodeta passes the (resolved) command line; Lightning warns when
            # sys.argv is also set, which it always is for a console command.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            PynodetaCLI(
                model_class=LightningModule,  # NODEModule, DiffusionModule, or any other LightningModule
                subclass_mode_model=True,
                datamodule_class=LightningDataModule,
                subclass_mode_data=True,
                auto_configure_optimizers=False,  # optimisers come from the module's typed `optim` preset
                save_config_kwargs={"overwrite": True},
                args=argv,
            )
    except ConfigurationError as error:
        print(f"pynodeta: error: {error}", file=sys.stderr)
        return 2
    print(f"pynodeta: finished in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0
