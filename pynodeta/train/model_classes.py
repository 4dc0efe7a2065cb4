"""Which classes a training config's ``model:`` section builds: a run's own model told from another one.

A checkpoint holds weights, not what they mean: a DDPM network's weights load into the same network under an
EDM objective, and into any network of the same shapes. A command that pairs a run's checkpoint with a
config checks that the config builds the classes of the run's own ``config.yaml`` (the module, its network,
its objective, ...), by class name: a run's file spells a class by its full path, a shipped config by
pynodeta's short one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .legacy_configs import upgrade_diffusion_model_section

__all__ = ["model_classes", "run_model_classes", "different_classes", "differences_from_run"]


def model_classes(section: Any) -> dict[str, str]:
    """{place: class name} of every ``class_path`` in a model section, places named by their keys without
    ``init_args`` ("model" for the module itself, "model.objective", "model.model" for its network)."""
    found: dict[str, str] = {}

    def walk(node: Any, place: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("class_path"), str):
                found[place] = node["class_path"].rpartition(".")[2]
                walk(node.get("init_args"), place)
                return
            for key, value in node.items():
                walk(value, f"{place}.{key}")
        elif isinstance(node, (list, tuple)):
            for index, value in enumerate(node):
                walk(value, f"{place}[{index}]")

    walk(upgrade_diffusion_model_section(section), "model")
    return found


def run_model_classes(config: Path | None = None, *, text: str | None = None) -> dict[str, str] | None:
    """:func:`model_classes` of a run's ``config.yaml`` (or of its YAML ``text``), None where it cannot be read
    (nothing to compare)."""
    import yaml

    try:
        content = yaml.safe_load(config.read_text() if text is None else text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(content, dict) or not isinstance(content.get("model"), dict):
        return None
    try:
        return model_classes(content["model"])
    except ValueError:  # a legacy section that no longer upgrades: the loader reports it on its own
        return None


def different_classes(ours: dict[str, str], runs: dict[str, str]) -> list[str]:
    """The places where two :func:`model_classes` differ, as "place: Ours here, Theirs in the run"."""
    return [f"{place}: {ours.get(place, 'nothing')} here, {runs.get(place, 'nothing')} in the run"
            for place in sorted(set(ours) | set(runs)) if ours.get(place) != runs.get(place)]


def differences_from_run(ours: dict[str, str] | None, run_config: Path | None, stored: str | None = None) -> list[str]:
    """:func:`different_classes` of ``ours`` against the run's own classes: its ``config.yaml`` (``run_config``),
    else the copy ``stored`` in its checkpoint; [] where there is nothing to compare."""
    if run_config is not None:
        runs = run_model_classes(run_config)
    else:
        runs = run_model_classes(text=stored) if stored is not None else None
    return [] if ours is None or runs is None else different_classes(ours, runs)
