"""The ``pynodeta`` training command: LightningCLI with pynodeta's modules, configs and run summary.

    pynodeta fit --config digits_tabn                 # a shipped config, by name
    pynodeta fit --config my.yaml --trainer.max_epochs 5
    pynodeta fit --config digits_tabn --ckpt_path runs/.../last.ckpt   # resume exactly, in the same folder
    pynodeta fit --config digits_tabn --ckpt_path last                 # the newest last.ckpt of this config
    pynodeta test --config runs/.../config.yaml --ckpt_path runs/.../best.ckpt
    pynodeta fit --config digits_tabn --print_config  # the resolved, typed configuration

Every class in a config is given by ``class_path``/``init_args`` and checked by jsonargparse
before anything is built; constructors validate their arguments, so a typo or a bad value stops
the run before training starts, with the message printed as ``pynodeta: error: ...``. So does a
missing or corrupt ``--ckpt_path`` file, a run folder that another live run holds, and a ``fit``
into a folder that holds another run's files (:mod:`pynodeta.train.run_dir`). A training loss that
turns NaN or infinite stops the run at that step (:mod:`pynodeta.train.divergence`), exit status 1.
"""

from __future__ import annotations

import sys
import time
import warnings

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from pynodeta.data.errors import DatasetFileError

from .adaptive_threads import AdaptiveThreads, use_threads
from .base import TrainingModule
from .checkpoint_io import AtomicCheckpointIO
from .configs import resolve_config_args
from .divergence import StopOnNonFiniteLoss, TrainingDiverged
from .fit_errors import FitSettingError
from .legacy_configs import refuse_legacy_fit_configs
from .plots import plot_after_fit
from .resume import prepare_ckpt_path
from .run_dir import RunDirectoryError, RunDirLock, check_fit_run_dir, keep_csv_metrics, remove_stale_run_tmp_files
from .run_loader import root_cause
from .safe_load import CheckpointError
from .summary import RunSummary

__all__ = ["main", "PynodetaCLI", "ConfigurationError"]


class ConfigurationError(Exception):
    """A config that parses but cannot be built (a bad value, missing data); raised before training."""


class PynodetaCLI(LightningCLI):
    """LightningCLI with pynodeta's extras.

    Extra options: ``--num_threads N`` (``torch.set_num_threads`` for this run; default: torch's, lowered to
    a container's CPU quota), ``--test_after_fit true`` (``fit`` then evaluates the final weights on the test
    set and prints a one-line summary of the module's metrics, e.g. test accuracy and NFE), ``--plots false``
    (no PNGs of the training curves at the end of ``fit``). Checkpoints are written atomically
    (:class:`AtomicCheckpointIO`) unless the config names another CheckpointIO plugin. ``model`` may be
    any :class:`TrainingModule` subclass, of any model family. ``--ckpt_path`` is checked before
    anything is built; ``fit`` resumes in the checkpoint's run folder. The run folder is locked for the
    run and cleared of a killed run's temporary files. Every trainer stops at the first non-finite
    training loss (:class:`StopOnNonFiniteLoss`).
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--num_threads", type=int | None, default=None,
                            help="torch.set_num_threads for this run (e.g. 2 on a 2-core machine; default: "
                                 "torch's, lowered to a container's CPU quota)")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="after fit, test the final weights and print a summary line")
        parser.add_argument("--unsafe_load", type=bool, default=False,
                            help="read --ckpt_path with torch.load(weights_only=False), which runs any code the file "
                                 "holds; only for files you made or fully trust")
        parser.add_argument("--plots", type=bool, default=True,
                            help="after fit, write PNGs of loss, metrics and NFE over training beside "
                                 "metrics.csv (needs matplotlib: pip install 'pynodeta[plot]')")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint here (for its hyperparameters), right after parsing:
        # check the file first, so a bad one is a clear error rather than a traceback.
        subcommand = self.config.get("subcommand")
        self._resumed_epochs = None
        if subcommand:
            unsafe = bool(self.config[subcommand].get("unsafe_load"))
            self._check_weights_only(subcommand, unsafe)
            try:
                self._resumed_epochs = prepare_ckpt_path(subcommand, self.config[subcommand], unsafe)
            except (CheckpointError, RunDirectoryError) as error:
                raise ConfigurationError(str(error)) from error
        if self._resumed_epochs is not None:  # keep_csv_metrics keeps the rows CSVLogger warns it deletes
            warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        if subcommand and self.config[subcommand].get("unsafe_load"):
            return  # Lightning's own read of the hyperparameters is weights-only: the config stands as given
        super()._parse_ckpt_path()

    def _check_weights_only(self, subcommand: str, unsafe: bool) -> None:
        """``--unsafe_load`` is the one opt-in to unpickling a checkpoint; Lightning's ``--weights_only false``
        alone would be a second, unwarned one."""
        config = self.config[subcommand]
        if "weights_only" not in config:
            return
        if config.get("weights_only") is False and not unsafe:
            raise ConfigurationError("--weights_only false unpickles the checkpoint, which can run code from it; "
                                     "pynodeta's opt-in for that is --unsafe_load true (warned)")
        if unsafe:
            print("pynodeta: warning: --unsafe_load unpickles --ckpt_path with torch.load(weights_only=False), which "
                  "runs any code it contains; use it only on files you made or fully trust", file=sys.stderr)
            config["weights_only"] = False

    def before_instantiate_classes(self) -> None:
        threads = self._get(self.config, "num_threads")
        if threads is not None and threads < 1:
            raise ConfigurationError(f"num_threads must be >= 1, got {threads}")
        use_threads(threads, "--num_threads")  # none given: torch's default, within a container's CPU limit

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
            raise ConfigurationError(str(root_cause(error))) from error
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
        # every fit of every model family stops at its first non-finite loss (TrainingDiverged)
        return super()._instantiate_trainer(config, [*callbacks, StopOnNonFiniteLoss(), *_thread_advice(config)])

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            self._run_in_run_dir(subcommand)
        except FitSettingError as error:
            raise ConfigurationError(str(error)) from error
        except RuntimeError as error:  # torch's load_state_dict, when Lightning restores --ckpt_path
            if "Error(s) in loading state_dict" not in str(error):
                raise
            ckpt_path = self.config[subcommand].get("ckpt_path")
            raise ConfigurationError(
                f"the weights in --ckpt_path {str(ckpt_path)!r} do not fit the model this config builds "
                f"({_first_mismatch(str(error))}); pass the config the checkpoint was trained with "
                f"(its run's config.yaml), or start a new run without --ckpt_path") from error

    def _run_in_run_dir(self, subcommand: str) -> None:
        log_dir = self.trainer.log_dir if self.trainer.logger is not None else None
        # DDP: rank 0 holds the folder for all ranks; a remote folder (s3://...) has no local lock file
        if log_dir is None or self.trainer.global_rank != 0 or "://" in str(log_dir):
            super()._run_subcommand(subcommand)
            return
        lock = RunDirLock(log_dir)
        try:
            lock.acquire()
        except RunDirectoryError as error:
            raise ConfigurationError(str(error)) from error
        try:
            if subcommand == "fit":  # checked under the lock: a live run's folder gets the "in use" message
                check_fit_run_dir(log_dir, self.config[subcommand].get("ckpt_path"))
        except RunDirectoryError as error:
            lock.release()
            raise ConfigurationError(str(error)) from error
        try:  # a run killed mid-write left these; nobody else writes here while we hold the lock
            remove_stale_run_tmp_files(log_dir)
            if self._resumed_epochs is not None:
                keep_csv_metrics(self.trainer.logger, log_dir, self._resumed_epochs)
            super()._run_subcommand(subcommand)
        finally:
            lock.release()

    def after_fit(self) -> None:
        if self._get(self.config, "test_after_fit"):
            fit_metrics = dict(self.trainer.callback_metrics)
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
            formats = getattr(self.model, "summary_formats", {})
            RunSummary.from_metrics(fit_metrics, self.trainer.callback_metrics, formats).report(self.trainer)
        if self._get(self.config, "plots"):
            plot_after_fit(self.trainer)

    def after_test(self) -> None:
        formats = getattr(self.model, "summary_formats", {})
        RunSummary.from_metrics({}, self.trainer.callback_metrics, formats).report(self.trainer)


def _first_mismatch(message: str) -> str:
    """The first line of torch's load_state_dict error that names keys or shapes, shortened."""
    for line in message.splitlines():
        line = line.strip()
        if line.startswith(("Missing key", "Unexpected key", "size mismatch")):
            return line if len(line) <= 200 else line[:197] + "..."
    return message.splitlines()[0]


def _thread_advice(config: dict) -> list:
    """An advising AdaptiveThreads (``adapt=False``) for a CPU fit of more than one thread that has none: it
    says once when other processes leave fewer cores than the fit's threads, which then stall each other."""
    configured = config.get("callbacks") or []
    configured = configured if isinstance(configured, (list, tuple)) else [configured]
    on_cpu = str(config.get("accelerator") or "auto") == "cpu" or not torch.cuda.is_available()
    if not on_cpu or torch.get_num_threads() < 2 or any(isinstance(c, AdaptiveThreads) for c in configured):
        return []
    return [AdaptiveThreads(adapt=False)]


def main(argv: list[str] | None = None) -> int | None:
    """Entry point of ``pynodeta fit|validate|test|predict ...``; returns the exit status."""
    started = time.perf_counter()
    try:
        argv = resolve_config_args(list(sys.argv[1:] if argv is None else argv))
        refuse_legacy_fit_configs(argv)
    except ValueError as error:
        print(f"pynodeta: error: {error}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            # `args` is how pynodeta passes the (resolved) command line; Lightning warns when
            # sys.argv is also set, which it always is for a console command.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            PynodetaCLI(
                model_class=TrainingModule,  # any model family's module
                subclass_mode_model=True,
                datamodule_class=LightningDataModule,
                subclass_mode_data=True,
                auto_configure_optimizers=False,  # optimisers come from the module's typed `optim` preset
                save_config_kwargs={"overwrite": True},
                args=argv,
            )
    except (ConfigurationError, DatasetFileError) as error:  # a dataset file is read in setup, inside fit
        print(f"pynodeta: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:  # a run that failed, not a usage error: status 1
        print(f"pynodeta: error: {error}", file=sys.stderr)
        return 1
    if _leave_process_group() == 0:
        print(f"pynodeta: finished in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def _leave_process_group() -> int:
    """Under DDP: wait for every rank, then take the process group down before the interpreter exits (a rank
    that exited with it up while another still wrote its outputs was seen to abort in gloo's teardown).
    Returns this process's global rank (0 without DDP)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0
    rank = dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    return rank
