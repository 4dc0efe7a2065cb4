"""Shipped YAML configs (``pynodeta/configs/*.yaml``), addressable by bare name on the command line."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["shipped_configs", "shipped_config_path", "resolve_config_args"]


def shipped_configs() -> dict[str, Path]:
    """{name: path} of every config shipped with pynodeta (name = file name without ``.yaml``)."""
    folder = resources.files("pynodeta") / "configs"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def shipped_config_path(name: str) -> Path:
    """The path of the shipped config ``name``; ValueError listing the names if there is none."""
    configs = shipped_configs()
    if name not in configs:
        raise ValueError(
            f"no config file {name!r} and no shipped config of that name; shipped configs: "
            f"{', '.join(sorted(configs))}"
        )
    return configs[name]


def _resolve(value: str) -> str:
    # An existing file, a path, or inline YAML/JSON is left to jsonargparse; a bare word is a name.
    if os.path.exists(value) or any(c in value for c in "/\\:{}\n") or value.endswith((".yaml", ".yml", ".json")):
        return value
    return str(shipped_config_path(value))


def resolve_config_args(argv: list[str]) -> list[str]:
    """Replace bare shipped-config names after ``--config`` (or ``--config=``) with their paths."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = _resolve(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + _resolve(arg.split("=", 1)[1])
    return out
