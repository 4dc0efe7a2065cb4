"""Reading a training run back: one loader, one trust policy, for every command that opens a run.

``load_run(checkpoint, config=None, *, allow_modules=(), unsafe=False)`` is what ``pynodeta
diagnose``, ``sample``, ``evaluate`` and ``phema`` call; ``fit/validate/test --ckpt_path`` check the
file through :func:`read_run_checkpoint`, the same policy, before Lightning reads it. The policy:

* The checkpoint is read with ``torch.load(weights_only=True)`` (:func:`~pynodeta.train.safe_load.read_checkpoint`),
  which runs no code from the file. ``unsafe=True`` (``--unsafe-load``, warned) is the one opt-in to
  full unpickling, needed only for a whole pickled ``nn.Module``.
* The model and data are rebuilt from a config: the one the user names (``--config``: the user's own,
  built as given, as ``pynodeta fit --config`` builds it), else the ``config.yaml`` that ``pynodeta fit``
  saved beside the run's ``checkpoints/`` folder, else the class paths in the checkpoint's
  hyperparameters. Class paths from files the user did not name are checked against the allowlist
  (:mod:`pynodeta.train.trust`: pynodeta and ``allow_modules``), top-level and nested, **before any
  import**.
* An NVlabs/edm2 network pickle (``.pkl``) is read as data by :mod:`pynodeta.train.released_run`: its
  embedded source code is never executed, only tensor, storage and container globals are admitted.
* The weights must fit the rebuilt model tensor for tensor and be finite; the weight averages stored
  with them (:mod:`pynodeta.train.weight_averages`) are rebuilt beside the network.

Every failure is a :class:`~pynodeta.train.safe_load.CheckpointError` or a ``ValueError`` naming the
file and the fix, which the commands print as one ``pynodeta <command>: error:`` line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pynodeta.ema import WeightAverage
from pynodeta.ema.average import POSTHOC_KEY, RAW_WEIGHTS, check_average_key, parse_sigma_rel_key, sigma_rel_key
from pynodeta.ema.snapshots import SNAPSHOT_FORMAT

from .latent_runs import LATENTS_KEY, check_latent_record
from .legacy_configs import upgrade_diffusion_model_section
from .model_classes import differences_from_run, run_model_classes
from .released_run import RELEASED_FORMAT, RELEASED_SUFFIX, released_edm2_run
from .safe_load import CheckpointError, read_checkpoint
from .trust import check_class_paths, import_allowed_class
from .weight_averages import stored_averages

__all__ = ["RUN_CONFIG_KEY", "Run", "load_run", "read_run_checkpoint", "find_run_config", "build_from_config",
           "resolve_config", "root_cause"]


@dataclass
class Run:
    """A trained run, rebuilt: the module with the checkpoint's weights, its data, its weight averages."""

    module: nn.Module                           # the LightningModule (a bare nn.Module from an --unsafe-load file)
    datamodule: Any = None                      # the run's LightningDataModule, when a config or the file names one
    checkpoint: Path | None = None
    config: Path | None = None                  # the config the module was built from (None: the checkpoint's hparams)
    step: int | None = None                     # optimiser steps the checkpoint had done (its global_step)
    averages: list[tuple[str, WeightAverage]] = field(default_factory=list)  # (network attribute, average)
    example_input: torch.Tensor | None = None   # an example batch stored with a pickled module (diagnose)
    posthoc: dict | None = None                 # {"sigma_rel", "step"} when `pynodeta phema` wrote the weights
    latents: dict | None = None                 # {"vae", "scaling"} of a run trained on VAE latents
    _reconstructed: dict[str, int] = field(default_factory=dict, repr=False)  # key -> step, of use_average

    @property
    def evaluated_with(self) -> str:
        """The default weights: the average training evaluated with (``"ema"``, ``"sigma_rel=0.1"`` or
        ``"none"``), or ``"none"`` for a checkpoint whose network weights are a post-hoc reconstruction."""
        if self.posthoc is not None:
            return RAW_WEIGHTS
        return getattr(self.module, "evaluation_average", RAW_WEIGHTS)

    def describe(self, key: str) -> str:
        """What the weights of ``key`` are, for messages: a post-hoc checkpoint's raw weights are its average."""
        if key == RAW_WEIGHTS and self.posthoc is not None:
            return f"sigma_rel={self.posthoc['sigma_rel']:g} (post hoc, step {self.posthoc['step']})"
        if key in self._reconstructed:
            return f"{key} (post hoc from {self.snapshot_dir}, step {self._reconstructed[key]})"
        return key

    def _use_reconstruction(self, key: str) -> str:
        """Rebuild the power-function EMA ``key`` from the run's snapshots at the last snapshot step at or
        before the checkpoint's (EDM2's post-hoc EMA), after checking they are of this run."""
        from pynodeta.ema import list_snapshots, posthoc_reconstruct

        snapshots = list_snapshots(self.snapshot_dir)
        if self.run_id is not None and snapshots[0].run_id != self.run_id:
            raise ValueError(f"the snapshots in {str(self.snapshot_dir)!r} are of run {snapshots[0].run_id}, the "
                             f"checkpoint of run {self.run_id}; they cannot give this run's {key}")
        steps = [info.step for info in snapshots if self.step is None or info.step <= self.step]
        if not steps:
            raise ValueError(f"no snapshot in {str(self.snapshot_dir)!r} at or before the checkpoint's step "
                             f"{self.step}")
        target = next((t for t, a in self.averages if hasattr(a, "run_id")), "model")
        state = posthoc_reconstruct(self.snapshot_dir, parse_sigma_rel_key(key), steps[-1])
        self.module.get_submodule(target).load_state_dict(state)
        self._reconstructed[key] = steps[-1]
        return key

    def average_keys(self) -> tuple[str, ...]:
        """Every stored average, e.g. ``("ema",)`` or ``("sigma_rel=0.05", "sigma_rel=0.1")``."""
        return tuple(key for _, average in self.averages for key in average.keys())

    @property
    def run_id(self) -> str | None:
        """The identity the run's power-function EMA gives its snapshots (None without one)."""
        return next((average.run_id for _, average in self.averages if hasattr(average, "run_id")), None)

    @property
    def snapshot_dir(self) -> Path | None:
        """``<run>/phema``, where the power-function EMA callback writes by default, if it exists."""
        if self.checkpoint is None or self.checkpoint.parent.name != "checkpoints":
            return None
        folder = self.checkpoint.parent.parent / "phema"
        return folder if folder.is_dir() else None

    @torch.no_grad()
    def use_average(self, key: str | None = None) -> str:
        """Put the average ``key`` (default: :attr:`evaluated_with`) into the network's weights, in place;
        ``"none"`` keeps the raw weights. A ``sigma_rel=X`` the run did not track is reconstructed post hoc
        from the run's snapshots (:attr:`snapshot_dir`). Returns the key used, in its canonical spelling."""
        key = self.evaluated_with if key is None else key
        if self.posthoc is not None and key.strip().startswith("sigma_rel=") and \
                sigma_rel_key(parse_sigma_rel_key(key)) == sigma_rel_key(float(self.posthoc["sigma_rel"])):
            return RAW_WEIGHTS  # the network's weights are this reconstruction (`pynodeta phema`)
        if key.strip().startswith("sigma_rel=") and self.snapshot_dir is not None:
            wanted = sigma_rel_key(parse_sigma_rel_key(key))
            if wanted not in self.average_keys():
                return self._use_reconstruction(wanted)
        key = check_average_key(key, self.average_keys())
        if key == RAW_WEIGHTS:
            return key
        target, average = next((t, a) for t, a in self.averages if key in a.keys())
        network = self.module.get_submodule(target)
        for param, averaged in zip(network.parameters(), average.averaged(key).parameters()):
            param.copy_(averaged)
        return key


def read_run_checkpoint(path: str | Path, *, unsafe: bool = False, allow_modules: Iterable[str] = (),
                        how_to_allow: str = "pass --allow-module {module}") -> Any:
    """The content of a checkpoint, read under the trust policy: safe load, a snapshot or a non-checkpoint
    named as such, the hyperparameters' class paths checked against the allowlist (nothing imported)."""
    if Path(path).suffix == RELEASED_SUFFIX:
        raise CheckpointError(f"{str(path)!r} is an NVlabs/edm2 network pickle, not a Lightning checkpoint; "
                              f"`pynodeta sample --checkpoint` reads it, and `pynodeta phema --snapshots` a folder "
                              f"of NVlabs' snapshot pickles")
    content = read_checkpoint(path, unsafe=unsafe)
    if isinstance(content, dict) and content.get("format") == SNAPSHOT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is a power-function EMA snapshot, not a training checkpoint; pass "
                              f"its folder to `pynodeta phema --snapshots` and the run's checkpoint here")
    if isinstance(content, dict) and "state_dict" in content:
        where = f"the checkpoint {str(path)!r}"
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            check_class_paths(content.get(key) or {}, allow_modules, f"{where} ({key})", how_to_allow)
    return content


def load_run(checkpoint: str | Path, config: str | Path | None = None, *, allow_modules: Iterable[str] = (),
             unsafe: bool = False) -> Run:
    """The run of ``checkpoint``, rebuilt under the trust policy of the module docstring.

    ``config``: the run's training config (a YAML path or a shipped config's name); default the
    ``config.yaml`` beside the checkpoint, else the checkpoint's own hyperparameters. ``allow_modules``:
    modules besides pynodeta whose classes a file the user did not name may build. ``unsafe``: also
    accept whole pickled modules (runs code from the file).
    """
    path = Path(checkpoint)
    if path.suffix == RELEASED_SUFFIX:  # NVlabs' pickles are read as data, never torch.load-ed or unpickled
        return released_edm2_run(path, config)
    allow_modules = tuple(allow_modules)
    content = read_run_checkpoint(path, unsafe=unsafe, allow_modules=allow_modules)
    pickled = _pickled_module(content, path)
    if pickled is not None:
        return pickled
    if isinstance(content, dict) and content.get("format") == RELEASED_FORMAT:  # `pynodeta phema` of NVlabs' snapshots
        return released_edm2_run(path, config, content)
    if not isinstance(content, dict) or "state_dict" not in content:
        keys = f" with keys {sorted(map(str, content))[:6]}" if isinstance(content, dict) else ""
        raise CheckpointError(f"{str(path)!r} holds a {type(content).__name__}{keys}; expected a Lightning checkpoint "
                              f"(with a 'state_dict') as `pynodeta fit` writes it, or, with --unsafe-load, an "
                              f"nn.Module saved with torch.save(model, path)")
    config_path = resolve_config(config) if config is not None else find_run_config(path)
    stored = content.get(RUN_CONFIG_KEY) if isinstance(content.get(RUN_CONFIG_KEY), str) else None
    if config_path is not None:
        module, datamodule = build_from_config(config_path, allow_modules=None if config else allow_modules)
        if config is not None:
            _check_same_model(config_path, path, stored)
        _load_weights(module, content["state_dict"], path, config_path)
    elif stored is not None:  # `pynodeta phema --checkpoint` keeps the run's config.yaml in its output
        module, datamodule = build_from_config(path, allow_modules=allow_modules, text=stored)
        _load_weights(module, content["state_dict"], path, path)
    else:
        module, datamodule = _build_from_hyperparameters(path, content, allow_modules, unsafe)
    _check_finite(content["state_dict"], path)
    averages = _averages(content, module, path)
    step = content.get("global_step")
    posthoc = content.get(POSTHOC_KEY) if isinstance(content.get(POSTHOC_KEY), dict) else None
    latents = content.get(LATENTS_KEY)
    if latents is not None:
        try:
            check_latent_record(latents, f"the checkpoint {str(path)!r}")
        except ValueError as error:
            raise CheckpointError(str(error)) from error
    return Run(module, datamodule, path, config_path, int(step) if step is not None else None, averages,
               posthoc=posthoc, latents=latents)


def _check_same_model(config: Path, checkpoint: Path, stored: str | None) -> None:
    """A config given with a run's checkpoint builds the classes of the run's own config.yaml (beside the
    checkpoint, or the copy ``stored`` in it), where there is one: an EDM run's weights under a DDPM config
    would be sampled with the wrong objective, without error."""
    run_config = find_run_config(checkpoint)
    if run_config is not None and run_config.resolve() == config.resolve():
        return
    differences = differences_from_run(run_model_classes(config), run_config, stored)
    if differences:
        where = (f"the run in {str(run_config.parent)!r}, whose config.yaml" if run_config is not None else
                 "a run whose config.yaml (stored in the checkpoint)")
        raise CheckpointError(
            f"the checkpoint {str(checkpoint)!r} belongs to {where} builds other classes than the config "
            f"{str(config)!r} ({'; '.join(differences)}): its weights would be taken for another model. Leave out "
            f"--config (the run's own is used), or pass the one it was trained with")


RUN_CONFIG_KEY = "pynodeta_run_config"  # a checkpoint's own copy of its run's config.yaml (YAML text)


def find_run_config(checkpoint: Path) -> Path | None:
    """``config.yaml`` beside the checkpoint or one level up (``<run>/checkpoints/X.ckpt``), if any."""
    found = [d / "config.yaml" for d in (checkpoint.parent, checkpoint.parent.parent) if (d / "config.yaml").is_file()]
    return found[0] if found else None


def _pickled_module(content, path: Path) -> Run | None:
    """A whole pickled module, or ``{"model": module, "example_input": batch}`` (``--unsafe-load`` files)."""
    if isinstance(content, nn.Module):
        return Run(content, checkpoint=path)
    if isinstance(content, dict) and isinstance(content.get("model"), nn.Module):
        example = content.get("example_input")
        if example is not None and not isinstance(example, torch.Tensor):
            raise ValueError(f"'example_input' in {str(path)!r} must be a tensor, got {type(example).__name__}")
        return Run(content["model"], checkpoint=path, example_input=example)
    return None


def resolve_config(config: str | Path) -> Path:
    """A config's path: an existing file, or the name of a shipped config (``digits_tabn``)."""
    path = Path(config)
    if path.is_file():
        return path
    if path.suffix or len(path.parts) > 1:
        raise ValueError(f"config {str(config)!r} does not exist or is not a file")
    from .configs import shipped_config_path  # a bare name: a shipped config

    return shipped_config_path(str(config))


def build_from_config(config: Path, *, allow_modules: Iterable[str] | None = None, seed: int | None = None,
                      text: str | None = None):
    """(LightningModule, LightningDataModule) of a training config's ``model:`` and ``data:`` sections.

    ``allow_modules`` None: the config is the user's own and is built as given; else every class path
    in the two sections must lie in pynodeta or these modules, checked before anything is imported.
    Initial weights are drawn with the config's ``seed_everything`` (``seed`` overrides it); the global
    RNG is left as it was. ``text``: the config's YAML, stored in the checkpoint ``config`` (not a file).
    """
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule, LightningModule

    name = f"config {str(config)!r}" if text is None else f"the config stored in {str(config)!r}"
    try:
        content = yaml.safe_load(config.read_text() if text is None else text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{name} is not readable YAML: {str(error).splitlines()[0]}") from error
    missing = [k for k in ("model", "data") if not isinstance(content, dict) or not isinstance(content.get(k), dict)]
    if missing:
        raise ValueError(f"{name} has no {' and no '.join(missing)} section; expected a training "
                         f"config with model: and data: (class_path, init_args)")
    sections = {"model": upgrade_diffusion_model_section(content["model"]), "data": content["data"]}
    where = f"the config {str(config)!r}" if text is None else name
    if allow_modules is not None:
        check_class_paths(sections, allow_modules, f"{where} found beside the checkpoint" if text is None else where)
    for name, base in (("model", LightningModule), ("data", LightningDataModule)):
        # imports the top-level classes (already vetted) and refuses a non-Lightning class before any call
        import_allowed_class(sections[name].get("class_path"), base, allow_modules, f"{where} ({name}: class_path)")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    # ``instantiate`` replaced ``instantiate_classes`` in jsonargparse 4.49
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    seed = content.get("seed_everything") if seed is None else seed
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed if isinstance(seed, int) and not isinstance(seed, bool) else 0)
            built = instantiate(parser.parse_object(sections))
    except Exception as error:  # noqa: BLE001 - jsonargparse and constructors report bad configs this way
        raise ValueError(f"{name} does not build: {_first_line(root_cause(error))}") from error
    return built.model, built.data


def _build_from_hyperparameters(path: Path, content: dict, allow_modules: tuple[str, ...], unsafe: bool):
    from lightning.pytorch import LightningDataModule, LightningModule

    hyperparameters = content.get("hyper_parameters") or {}
    model_class = hyperparameters.get("_class_path") if isinstance(hyperparameters, dict) else None
    if model_class is None:
        raise ValueError(f"the Lightning checkpoint {str(path)!r} does not name its model class and has no "
                         f"config.yaml beside it; pass the training config as well: --config CONFIG.yaml")
    where = f"the checkpoint {str(path)!r}"
    model_type = import_allowed_class(model_class, LightningModule, allow_modules, f"{where} (hyper_parameters)")
    data = content.get("datamodule_hyper_parameters") or {}
    data_type = None
    if isinstance(data, dict) and "_class_path" in data:
        data_type = import_allowed_class(data["_class_path"], LightningDataModule, allow_modules,
                                         f"{where} (datamodule_hyper_parameters)")
    try:
        module = model_type.load_from_checkpoint(path, map_location="cpu", weights_only=not unsafe)
    except RuntimeError as error:
        raise CheckpointError(f"the weights in {str(path)!r} do not fit the model its hyperparameters build: "
                              f"{_first_line(error)}") from error
    datamodule = None if data_type is None else data_type(**{k: v for k, v in data.items() if not k.startswith("_")})
    return module, datamodule


def _load_weights(module: nn.Module, weights: dict, path: Path, config: Path) -> None:
    """Load strictly; a mismatch is named by its first tensor instead of PyTorch's page-long list."""
    from .diffusion import DiffusionModule, migrate_legacy_parameters

    if isinstance(module, DiffusionModule):
        weights = migrate_legacy_parameters(weights)
    expected = module.state_dict()
    problems = [f"{name} is missing" for name in expected if name not in weights]
    problems += [f"{name} is not in the model" for name in weights if name not in expected]
    problems += [f"{name} has shape {tuple(weights[name].shape)} in the checkpoint, {tuple(value.shape)} in the model"
                 for name, value in expected.items()
                 if name in weights and hasattr(weights[name], "shape") and weights[name].shape != value.shape]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"the weights in {str(path)!r} do not fit the model built from {str(config)!r}: "
                              f"{problems[0]}{more}; pass the run's own config (--config)")
    module.load_state_dict(weights)


def _check_finite(weights: dict, path: Path) -> None:
    bad = [name for name, value in weights.items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise CheckpointError(f"the weights in {str(path)!r} are not finite: {bad[0]} holds NaN or Inf{more}; the run "
                              f"diverged before this checkpoint was written, use an earlier one")


def _averages(content: dict, module: nn.Module, path: Path) -> list[tuple[str, WeightAverage]]:
    try:
        averages = stored_averages(content, module)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"the weight averages in {str(path)!r} do not fit the rebuilt model: "
                              f"{_first_line(error)}") from error
    for target, average in averages:
        for key in average.keys():
            for name, value in average.averaged(key).state_dict().items():
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise CheckpointError(f"the weight average {key!r} in {str(path)!r} is not finite ({target}."
                                          f"{name} holds NaN or Inf); use an earlier checkpoint or --average none")
    return averages


def root_cause(error: BaseException) -> BaseException:
    # jsonargparse re-raises a constructor's error as "Does not validate against any of the Union
    # subtypes ..."; the constructor's own message, at the end of the chain, is the one that helps.
    while (cause := error.__cause__ or error.__context__) is not None:
        error = cause
    return error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

