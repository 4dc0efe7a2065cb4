"""Which classes a checkpoint, or the config that came beside it, may make pynodeta build.

A Lightning checkpoint names its module and datamodule classes as strings (``_class_path``, and
``class_path`` entries nested in the hyperparameters), and so does a run's ``config.yaml``; building
them means importing a module and calling the named object with the file's arguments. A plain-data
file could thus name ``subprocess.Popen`` or ``os.system``. So a class path is accepted only when

* its module is pynodeta's own or under a module the user allowed (``--allow-module mypkg``), and
* (for the top-level classes) it names a ``LightningModule`` / ``LightningDataModule`` subclass,
  checked after import and before anything is called.

Lightning's ``_instantiator`` hook is accepted only as LightningCLI writes it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

__all__ = ["ClassPathRefused", "TRUSTED_MODULES", "check_class_paths", "import_allowed_class",
           "STANDARD_INSTANTIATOR"]

TRUSTED_MODULES = ("pynodeta",)
STANDARD_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


class ClassPathRefused(ValueError):
    """A class path in a checkpoint that is outside the allowlist or not the expected kind of class."""


def _allowed(class_path: str, allowed_modules: Iterable[str]) -> bool:
    module = class_path.rpartition(".")[0]
    return any(module == root or module.startswith(root + ".") for root in (*TRUSTED_MODULES, *allowed_modules))


def check_class_paths(hyperparameters, allowed_modules: Iterable[str], where: str,
                      how_to_allow: str = "pass --allow-module {module}") -> None:
    """Refuse any ``class_path`` / ``_class_path`` (at any depth) outside the allowed modules.

    ``how_to_allow``: the advice in the message, with ``{module}`` the refused class's module.
    """
    allowed_modules = tuple(allowed_modules)
    pending = [hyperparameters]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("class_path", "_class_path"):
                    _require_allowed(value, allowed_modules, where, how_to_allow)
                elif key == "_instantiator" and value != STANDARD_INSTANTIATOR:
                    raise ClassPathRefused(f"{where} names the instantiator {value!r}; only LightningCLI's "
                                           f"{STANDARD_INSTANTIATOR!r} is accepted")
                else:
                    pending.append(value)
        elif isinstance(node, (list, tuple)):
            pending.extend(node)


def _require_allowed(class_path, allowed_modules: tuple[str, ...], where: str,
                     how_to_allow: str = "pass --allow-module {module}") -> None:
    if not isinstance(class_path, str) or "." not in class_path:
        raise ClassPathRefused(f"{where} names the class {class_path!r}; expected a dotted 'module.Class' string")
    if not _allowed(class_path, allowed_modules):
        roots = ", ".join(repr(m) for m in (*TRUSTED_MODULES, *allowed_modules))
        raise ClassPathRefused(
            f"{where} names {class_path!r}, which is outside the allowed modules ({roots}); refusing to import "
            f"it. If you trust the file and that module, "
            f"{how_to_allow.format(module=class_path.rpartition('.')[0])}")


def import_allowed_class(class_path, base: type, allowed_modules: Iterable[str] | None, where: str) -> type:
    """The class ``class_path`` names, if allowed and a subclass of ``base``; nothing is called.

    ``allowed_modules`` None: the file is the user's own (a config they named), so only the kind of
    class is checked."""
    if allowed_modules is not None:
        _require_allowed(class_path, tuple(allowed_modules), where)
    elif not isinstance(class_path, str) or "." not in class_path:
        raise ClassPathRefused(f"{where} names the class {class_path!r}; expected a dotted 'module.Class' string")
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import {class_path!r} named in {where}: {error}") from error
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ClassPathRefused(f"{where} names {class_path!r}, which is not a {base.__name__} subclass; refusing "
                               f"to call it")
    return found
