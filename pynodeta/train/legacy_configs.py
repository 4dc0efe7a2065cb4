"""Diffusion configs written before objectives were composed, read as today's.

Until objectives became classes of their own, ``DiffusionModule`` took the objective as a string
(``objective: edm``) beside a flat list of every objective's options, and EDM2 had its own module,
``pynodeta.train.edm2_module.EDM2DiffusionModule``. Runs trained then keep such a ``config.yaml``; the run
loader passes its ``model:`` section through :func:`upgrade_diffusion_model_section` so that they load,
sample and evaluate as before.
"""

from __future__ import annotations

from typing import Any

__all__ = ["upgrade_diffusion_model_section", "refuse_legacy_fit_configs"]

_MODULE = "pynodeta.train.diffusion.DiffusionModule"
_LEGACY_EDM2_MODULE = "pynodeta.train.edm2_module.EDM2DiffusionModule"
_OBJECTIVE_OPTIONS = {
    "ddpm": ("pynodeta.train.DDPMObjective", ("prediction", "timestep_sampler", "timestep_sampler_options",
                                              "loss_weighting", "loss_weighting_options")),
    "edm": ("pynodeta.train.EDMObjective", ("sigma_data", "p_mean", "p_std")),
    "edm2": ("pynodeta.train.EDM2Objective", ("sigma_data", "p_mean", "p_std", "logvar_channels")),
}
_SCHEDULE_OPTIONS = ("num_timesteps", "beta_schedule", "beta_start", "beta_end")
_EVALUATION_OPTIONS = {"sampler": "sampler", "sampler_steps": "steps", "eval_every_n_epochs": "every_n_epochs",
                       "eval_num_samples": "num_samples", "nll_num_images": "nll_num_images", "num_bins": "num_bins",
                       "inception_weights": "inception_weights"}
_DEFAULT_EDM2_SIGMA_REL = 0.10  # the former EDM2 module's default evaluation profile


def is_legacy(section: dict) -> bool:
    class_path = section.get("class_path")
    init_args = section.get("init_args") or {}
    if class_path == _LEGACY_EDM2_MODULE:
        return True
    return class_path in (_MODULE, "pynodeta.train.DiffusionModule") and isinstance(init_args.get("objective"), str)


def upgrade_diffusion_model_section(section: Any) -> Any:
    """A ``model:`` section in today's form; any section that is not a legacy diffusion one is returned as is."""
    if not isinstance(section, dict) or not is_legacy(section):
        return section
    old = dict(section.get("init_args") or {})
    kind = "edm2" if section["class_path"] == _LEGACY_EDM2_MODULE else old.pop("objective")
    if kind not in _OBJECTIVE_OPTIONS:
        raise ValueError(f"objective {kind!r} of a legacy DiffusionModule config is not one of 'ddpm', 'edm'")
    class_path, names = _OBJECTIVE_OPTIONS[kind]
    objective = {name: old.pop(name) for name in names if name in old}
    schedule = {name: old.pop(name) for name in _SCHEDULE_OPTIONS if name in old}
    if kind == "ddpm":
        if schedule:
            objective["schedule"] = {"class_path": "pynodeta.diffusion.DDPMSchedule", "init_args": schedule}
        if "num_bins" in old:
            objective["num_bins"] = old["num_bins"]
    for other, (_, other_names) in _OBJECTIVE_OPTIONS.items():  # the former module took (and ignored) these
        if other != kind:
            for name in other_names:
                old.pop(name, None)
    new = {"model": old.pop("model")}
    new["objective"] = {"class_path": class_path, "init_args": objective}
    if kind == "edm2":
        sigma_rel = old.pop("ema_sigma_rel", _DEFAULT_EDM2_SIGMA_REL)
        new["averaging"] = "none" if sigma_rel is None else {"sigma_rel": sigma_rel}
    elif "ema_decay" in old:
        decay = old.pop("ema_decay")
        new["averaging"] = "none" if decay is None else {"decay": decay}
    evaluation = {new_name: old.pop(name) for name, new_name in _EVALUATION_OPTIONS.items() if name in old}
    if evaluation:
        new["evaluation"] = evaluation
    new.update(old)  # sample_shape, optim
    return {"class_path": _MODULE, "init_args": new}


def refuse_legacy_fit_configs(argv: list[str]) -> None:
    """``pynodeta fit`` trains from today's form only: a ``--config`` file with a legacy diffusion ``model:``
    section is refused with that section rewritten, ready to paste (``load_run`` still reads old runs)."""
    import yaml

    paths = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    paths += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    for path in paths:
        try:
            with open(path) as file:
                content = yaml.safe_load(file)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # LightningCLI reports an unreadable config in its own words
        section = content.get("model") if isinstance(content, dict) else None
        if isinstance(section, dict) and is_legacy(section):
            rewritten = yaml.safe_dump({"model": upgrade_diffusion_model_section(section)}, sort_keys=False)
            raise ValueError(f"config {path!r} uses the DiffusionModule options of before objectives were composed "
                             f"(objective: <name> beside a flat option list, or EDM2DiffusionModule); its model: "
                             f"section reads today as:\n{rewritten}")
