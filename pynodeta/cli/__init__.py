"""The ``pynodeta`` command: one table of commands (``pynodeta.cli.commands.COMMANDS``) from which both
the dispatch and ``pynodeta --help`` are built.

    pynodeta --help                       # every command with its one-line description
    pynodeta fit --config digits_tabn     # training: fit, validate, test, predict (LightningCLI)
    pynodeta COMMAND --help               # a command's own options
"""

from __future__ import annotations

import sys

from .commands import COMMANDS, Command, find_command

__all__ = ["main", "usage", "COMMANDS", "Command"]

_HELP = ("-h", "--help")


def usage() -> str:
    """The text of ``pynodeta --help``: every command of the table with its description."""
    width = max(len(command.name) for command in COMMANDS)
    lines = [f"  {command.name:<{width}}  {command.summary}" for command in COMMANDS]
    return "\n".join([
        "usage: pynodeta COMMAND [options]",
        "",
        "Neural ODEs and diffusion models with time-aware normalisation.",
        "",
        "commands:",
        *lines,
        "",
        "Run 'pynodeta COMMAND --help' for a command's options.",
    ])


def main(argv: list[str] | None = None) -> int | None:
    """Entry point of the ``pynodeta`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in _HELP:
        print(usage())
        return 0 if argv else 2  # no command at all is a usage error, after showing what there is
    command = find_command(argv[0])
    if command is not None:
        return command.run(argv[1:])
    if argv[0].startswith("-"):  # an option before the command (e.g. --config x fit): LightningCLI's to read
        return find_command("fit").load()(argv)
    print(f"pynodeta: error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
    return 2
