"""What every ``pynodeta`` subcommand's argument parser shares: a usage error is reported, not exited on."""

from __future__ import annotations

import argparse

__all__ = ["UsageError", "ArgumentParser"]


class UsageError(Exception):
    """A bad command line; the subcommand prints its usage and the message, then returns 2."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # raise instead of sys.exit, so main() can return 2 and tests can call it
        raise UsageError(message)
