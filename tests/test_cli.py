"""The ``pynodeta`` command: one table drives both ``--help`` and the dispatch."""

import subprocess
import sys

import pytest

import pynodeta.cli as cli
from pynodeta.cli import COMMANDS, main

ALL_COMMANDS = ("fit", "validate", "test", "predict", "sample", "evaluate", "phema", "encode", "plot", "diagnose")


@pytest.mark.parametrize("argv, status", [(["--help"], 0), (["-h"], 0), ([], 2)])
def test_help_and_no_command_list_every_command_with_its_description(capsys, argv, status):
    assert main(argv) == status
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"  {command.name}" in out and command.summary in out
    assert {c.name for c in COMMANDS} == set(ALL_COMMANDS)


def test_the_console_script_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "pynodeta.cli", "--help"], capture_output=True, text=True,
                            check=True)
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(ALL_COMMANDS)


def test_every_handler_is_a_callable_and_dispatch_passes_the_arguments(monkeypatch):
    calls = []
    for command in COMMANDS:
        assert callable(command.load()), command.handler
    monkeypatch.setattr(cli.Command, "load", lambda self: lambda argv: calls.append((self.name, argv)) or 7)
    for command in COMMANDS:
        assert main([command.name, "--x", "1"]) == 7
    training = {"fit", "validate", "test", "predict"}  # LightningCLI reads the subcommand itself
    assert calls == [(name, [name, "--x", "1"] if name in training else ["--x", "1"]) for name in ALL_COMMANDS]


def test_an_unknown_command_is_a_usage_error_that_lists_the_commands(capsys):
    assert main(["fitt"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'fitt'" in err and "diagnose" in err
