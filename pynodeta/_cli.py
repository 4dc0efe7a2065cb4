"""What every ``pynodeta`` subcommand's argument parser shares: a usage error is reported, not exited on, and a
``--device`` is one this machine can compute on."""

from __future__ import annotations

import argparse

__all__ = ["UsageError", "ArgumentParser", "command_device"]


class UsageError(Exception):
    """A bad command line; the subcommand prints its usage and the message, then returns 2."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # raise instead of sys.exit, so main() can return 2 and tests can call it
        raise UsageError(message)


def command_device(name: str | None, flag: str = "--device"):
    """The ``torch.device`` named by ``flag`` (None: cuda where there is one, else cpu); a UsageError naming the
    flag and the devices that work here when this machine and torch build cannot compute on it (``meta``, a
    backend the build lacks, a GPU index beyond the count), instead of a traceback from the first tensor moved."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accelerators = _accelerators()
    choices = ["cpu"]
    for kind, count in accelerators.items():
        choices += [kind, f"{kind}:0 to {kind}:{count - 1}"] if count > 1 else [kind]
    use = f"use {', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else "use cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag} {name!r} is not a device name; {use}") from None
    if device.type == "cpu":
        return device
    if device.type == "meta":
        raise UsageError(f"{flag} {name!r}: a meta tensor holds no values, so nothing can be computed on it; {use}")
    if device.type not in accelerators:
        missing = "has no CUDA device" if device.type == "cuda" else f"cannot run on {device.type}"
        raise UsageError(f"{flag} {name!r}: this machine (torch {torch.__version__}) {missing}; {use}")
    count = accelerators[device.type]
    if device.index is not None and device.index >= count:
        raise UsageError(f"{flag} {name!r}: this machine has {count} {device.type} device(s); {use}")
    return device


def _accelerators() -> dict[str, int]:
    """{device type: how many} of the accelerators this torch build can use on this machine."""
    import torch

    found = {}
    if torch.cuda.is_available():  # ROCm builds report their GPUs as cuda too
        found["cuda"] = torch.cuda.device_count()
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found["xpu"] = xpu.device_count()
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found["mps"] = 1
    return found
