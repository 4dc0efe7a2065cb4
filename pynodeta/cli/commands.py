"""The one table of ``pynodeta`` commands: name, one-line description, handler.

Both the dispatch in ``pynodeta.cli.main`` and the command list of ``pynodeta --help`` are read from
``COMMANDS``, so a command cannot be runnable and invisible. Handlers are named as "module:function"
and imported only when their command runs: ``pynodeta --help`` loads no command's module (Lightning,
the data sets, the metrics).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Command", "COMMANDS", "find_command"]


@dataclass(frozen=True)
class Command:
    name: str                 # what the user types after ``pynodeta``
    summary: str              # one line for ``pynodeta --help``
    handler: str              # "module:function", called with the arguments as a list of strings
    keeps_name: bool = False  # pass the command name on too (LightningCLI reads fit/validate/... itself)

    def load(self) -> Callable[[list[str]], int | None]:
        module_name, function_name = self.handler.split(":")
        return getattr(importlib.import_module(module_name), function_name)

    def run(self, argv: list[str]) -> int | None:
        """Run the command with ``argv``, the words after its name; returns the exit status."""
        return self.load()([self.name, *argv] if self.keeps_name else argv)


_TRAIN = "pynodeta.train.cli:main"

COMMANDS: tuple[Command, ...] = (
    Command("fit", "train a model from a YAML config (e.g. --config digits_tabn), Lightning's fit", _TRAIN, True),
    Command("validate", "run a config's validation loop on a checkpoint (--ckpt_path)", _TRAIN, True),
    Command("test", "evaluate a checkpoint on a config's test set (--ckpt_path)", _TRAIN, True),
    Command("predict", "run a config's predict loop on a checkpoint (--ckpt_path)", _TRAIN, True),
    Command("sample", "draw images from a trained diffusion model's checkpoint",
            "pynodeta.train.sample_cli:sample_main"),
    Command("evaluate", "score a trained diffusion model: FD beside the real-data floor, NLL in bits/dim",
            "pynodeta.train.evaluate_cli:evaluate_main"),
    Command("phema", "reconstruct post-hoc EMA weights for any sigma_rel from a run's snapshots (EDM2)",
            "pynodeta.ema.cli:main"),
    Command("encode", "encode an image folder into VAE latents in resumable shards (latent diffusion, EDM2)",
            "pynodeta.data.encode_cli:main"),
    Command("plot", "PNG plots of a run's loss, metrics and NFE from its metrics.csv", "pynodeta.train.plots:main"),
    Command("diagnose", "find where a model's timestep signal dies (exit status 1 when it vanishes)",
            "pynodeta.diagnose.cli:main"),
)


def find_command(name: str) -> Command | None:
    return next((command for command in COMMANDS if command.name == name), None)
