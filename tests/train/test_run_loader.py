"""Reading runs back: ``load_run`` and the commands on it (``sample``, ``evaluate``, ``diagnose``, ``phema``,
``test --ckpt_path``) under one trust policy, with the weight average fit evaluated with, refusing
hostile, broken, mismatched and non-finite files with one line each, and writing outputs atomically."""

from __future__ import annotations

import builtins
import json
import os

import numpy as np
import pytest
import torch
import yaml

from pynodeta.cli import main
from pynodeta.train import load_run
from pynodeta.train.run_loader import build_from_config

UNET = {"image_size": 8, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
        "dropout": 0.0, "norm_groups": 1, "positional_embedding": True, "bias_init": "zero_operand"}


def _config(channels: int = 8, data_class: str = "pynodeta.data.DigitsDataModule") -> dict:
    return {"seed_everything": 0,
            "model": {"class_path": "pynodeta.train.diffusion.DiffusionModule",
                      "init_args": {"model": {"class_path": "pynodeta.models.DDPMUNet",
                                              "init_args": {**UNET, "channels": channels, "time_scale": 250.0}},
                                    "objective": {"class_path": "pynodeta.train.EDMObjective"},
                                    "evaluation": {"sampler": "euler", "steps": 2, "num_samples": 8,
                                                   "nll_num_images": 1, "num_bins": 17}}},
            "data": {"class_path": data_class, "init_args": {"batch_size": 16, "normalization": "diffusion"}}}


def _write_run(root, config: dict | None = None, *, nan: bool = False, perturb_ema: bool = True):
    """A run folder as ``pynodeta fit`` leaves it: <run>/config.yaml and <run>/checkpoints/last.ckpt, with an
    EMA that differs from the raw weights (so that which weights are used is visible)."""
    config = config or _config()
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    module, _ = build_from_config(run / "config.yaml")
    checkpoint = {"state_dict": module.state_dict(), "global_step": 7, "epoch": 0}
    if perturb_ema:
        with torch.no_grad():
            for shadow in module.ema.shadow_params:
                shadow.add_(0.05)
    module.on_save_checkpoint(checkpoint)
    if nan:
        name = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point())
        checkpoint["state_dict"][name][..., 0] = float("nan")
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    return run / "checkpoints" / "last.ckpt"


class _WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.fixture
def checkpoint(tmp_path):
    return _write_run(tmp_path)


# --- security --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["sample"], ["evaluate"], ["phema", "--snapshots", "{dir}", "--sigma-rel", "0.1",
                                                                  "--out", "{dir}/o.pt"], ["diagnose"], ["test"]])
def test_a_code_running_checkpoint_is_refused_as_unsafe_by_every_command(tmp_path, capsys, command):
    marker, path = tmp_path / "marker", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _WritesMarker(marker)}, path)
    if command[0] == "phema":
        from pynodeta.ema import PowerFunctionEMA

        ema = PowerFunctionEMA(torch.nn.Linear(2, 2))
        ema.update(1)
        ema.save_snapshot(tmp_path, 1)
    flag = "--ckpt_path" if command[0] == "test" else "--checkpoint"
    extra = ["--config", "digits_tabn"] if command[0] == "test" else []
    argv = [a.format(dir=tmp_path) for a in command] + extra + [flag, str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refused to load checkpoint" in err and "as unsafe" in err and "exec" in err and "--unsafe" in err
    assert not marker.exists()


def test_unsafe_load_is_the_warned_opt_in_of_sample(tmp_path, capsys):
    marker, path = tmp_path / "marker", tmp_path / "evil.ckpt"
    torch.save({"payload": _WritesMarker(marker)}, path)
    assert main(["sample", "--checkpoint", str(path), "--unsafe-load", "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert marker.exists() and "warning: --unsafe-load" in err and "expected a Lightning checkpoint" in err


def test_a_nested_class_path_in_the_config_beside_the_run_is_refused_before_import(tmp_path, capsys):
    marker = tmp_path / "marker"
    config = _config()
    config["model"]["init_args"]["model"] = {"class_path": "subprocess.Popen",
                                             "init_args": {"args": ["touch", str(marker)]}}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save({"state_dict": {}}, run / "checkpoints" / "last.ckpt")
    for command in ("sample", "evaluate", "diagnose"):
        assert main([command, "--checkpoint", str(run / "checkpoints" / "last.ckpt")]) == 2
        assert "'subprocess.Popen', which is outside the allowed modules" in capsys.readouterr().err
    assert not marker.exists()


def test_lightnings_own_weights_only_switch_is_not_a_second_opt_in(tmp_path, capsys):
    assert main(["test", "--config", "digits_tabn", "--weights_only", "false"]) == 2
    assert "--unsafe_load true" in capsys.readouterr().err


# --- which weights ---------------------------------------------------------------------------------------
def test_the_run_uses_the_average_fit_evaluated_with_unless_told(checkpoint):
    raw = load_run(checkpoint)
    assert raw.evaluated_with == "ema" and raw.average_keys() == ("ema",) and raw.step == 7
    weights = {k: v.clone() for k, v in raw.module.model.state_dict().items()}
    assert raw.use_average() == "ema"
    averaged = raw.module.model.state_dict()
    changed = [k for k in weights if not torch.equal(weights[k], averaged[k])]
    assert changed and all(torch.allclose(averaged[k], weights[k] + 0.05) for k in changed)
    assert load_run(checkpoint).use_average("none") == "none"
    with pytest.raises(ValueError, match=r"'sigma_rel=0.10' is not stored in this run \(it holds: ema, none\)"):
        load_run(checkpoint).use_average("sigma_rel=0.10")


def test_sample_draws_with_the_ema_by_default_and_raw_weights_on_request(checkpoint, tmp_path, capsys):
    out = {}
    for name, flags in (("default", []), ("ema", ["--average", "ema"]), ("none", ["--average", "none"]),
                        ("no_ema", ["--no-ema"])):
        path = tmp_path / f"{name}.npy"
        assert main(["sample", "--checkpoint", str(checkpoint), "--num", "3", "--out", str(tmp_path / "g.png"),
                     "--save-tensor", str(path), *flags]) == 0
        out[name] = np.load(path)
    assert "weights none" in capsys.readouterr().out
    assert np.array_equal(out["default"], out["ema"]) and np.array_equal(out["none"], out["no_ema"])
    assert not np.allclose(out["ema"], out["none"])


# --- broken, mismatched and non-finite runs: one line, exit 2 ------------------------------------------------
@pytest.mark.parametrize("case", ["empty", "garbage", "truncated", "snapshot", "narrower", "not_lightning", "nan"])
def test_bad_runs_are_one_line_errors(tmp_path, capsys, case):
    path = _write_run(tmp_path, nan=case == "nan")
    config = []
    if case in ("empty", "garbage", "truncated"):
        whole = path.read_bytes()
        path.write_bytes({"empty": b"", "garbage": b"junk " * 50, "truncated": whole[: len(whole) // 2]}[case])
    elif case == "snapshot":
        torch.save({"format": "pynodeta-phema-1", "profiles": []}, path)
    elif case == "narrower":
        (tmp_path / "narrow.yaml").write_text(yaml.safe_dump(_config(channels=4)))
        config = ["--config", str(tmp_path / "narrow.yaml")]
    elif case == "not_lightning":
        (tmp_path / "torch.yaml").write_text(yaml.safe_dump({**_config(), "model": {"class_path": "torch.nn.Linear",
                                                             "init_args": {"in_features": 1, "out_features": 1}}}))
        config = ["--config", str(tmp_path / "torch.yaml")]
    expected = {"empty": "is empty", "garbage": "truncated or not a torch.save file", "truncated": "truncated",
                "snapshot": "is a power-function EMA snapshot, not a training checkpoint",
                "narrower": "do not fit the model built from", "not_lightning": "not a LightningModule subclass",
                "nan": "are not finite"}[case]
    for command in ("sample", "evaluate", "diagnose"):
        assert main([command, "--checkpoint", str(path), *config]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"pynodeta {command}: error:") and expected in err, err
        assert len(err.strip().splitlines()) == 1, err


# --- outputs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("out", "message"), [("{dir}/file.txt/s.png", "is a file, not a folder"),
                                              ("{dir}/s.jpg", "must end in .png"),
                                              ("{dir}/missing/s.png", "does not exist; create it first")])
def test_output_paths_are_checked_before_anything_is_loaded(tmp_path, capsys, out, message):
    (tmp_path / "file.txt").write_text("x")
    # the checkpoint does not exist: the output is refused first, so nothing was read or drawn
    assert main(["sample", "--checkpoint", str(tmp_path / "none.ckpt"), "--out", out.format(dir=tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_a_failed_draw_leaves_no_output_behind(checkpoint, tmp_path, monkeypatch):
    import pynodeta.train.diffusion_sampling as sampling

    real = sampling._draw_batch
    calls = []

    def fails_on_the_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("sampler produced NaN/Inf images")
        return real(*args)

    monkeypatch.setattr(sampling, "_draw_batch", fails_on_the_second_batch)
    argv = ["sample", "--checkpoint", str(checkpoint), "--num", "300", "--out", str(tmp_path / "g.png"),
            "--save-tensor", str(tmp_path / "all.npy")]
    assert main(argv) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no grid, no tensor, no temporary file


def test_large_draws_stream_and_the_grid_is_capped(checkpoint, tmp_path):
    from pynodeta.train.diffusion_sampling import generate
    from pynodeta.train.sample_outputs import GRID_MAX, GridWriter, TensorWriter

    grid = GridWriter(tmp_path / "g.png")
    for _ in range(3):
        grid.add(torch.zeros(200, 1, 8, 8))
    assert sum(len(k) for k in grid._kept) == GRID_MAX
    with pytest.raises(ValueError, match="save them as .npy instead"):
        TensorWriter(tmp_path / "big.pt", 10 ** 7, (3, 64, 64))
    assert main(["sample", "--checkpoint", str(checkpoint), "--num", "300", "--seed", "3", "--out",
                 str(tmp_path / "g.png"), "--save-tensor", str(tmp_path / "all.npy")]) == 0
    run = load_run(checkpoint)
    run.use_average()
    expected = generate(run.module, 300, "euler", 2, generator=torch.Generator().manual_seed(3)).images
    assert np.array_equal(np.load(tmp_path / "all.npy"), expected.numpy())


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_a_saved_tensor_gets_the_permissions_a_plain_open_gives(tmp_path, suffix):
    from pynodeta.train.sample_outputs import TensorWriter

    previous = os.umask(0o022)
    try:
        writer = TensorWriter(tmp_path / f"x{suffix}", 2, (1, 2, 2))
        writer.add(torch.zeros(2, 1, 2, 2))
        writer.close()
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / f"x{suffix}").st_mode & 0o777 == 0o644


@pytest.mark.parametrize(("argv", "message"), [
    (["sample", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["sample", "--num", "0"], "--num must be >= 1, got 0"),
    (["sample", "--num_threads", "0"], "--num_threads must be >= 1, got 0"),
    (["sample", "--rtol", "nan"], "--rtol must be a positive number"),
    (["evaluate", "--nll-images", "0"], "--nll-images must be >= 1, got 0"),
    (["evaluate", "--num", "1"], "--num must be >= 2"),
    (["sample", "--average", "sigma_rel=abc"], "must be a number"),
    (["sample", "--sampler", "dpm_adaptive", "--steps", "3"], "--steps 3 would be ignored: sampler 'dpm_adaptive' "
                                                              "chooses its steps from an error estimate; drop --steps"),
    (["sample", "--sampler", "ddpm", "--steps", "3"], "sampler 'ddpm' walks every one of the DDPM schedule's T "
                                                      "timesteps; drop --steps, or pass --sampler ddim for fewer"),
    (["evaluate", "--sampler", "ode", "--steps", "3"], "--steps 3 would be ignored: sampler 'ode' solves the "
                                                       "probability-flow ODE with adaptive steps; drop --steps"),
    (["evaluate", "--nll-images", "361"], "--nll-images 361: the run's test split has 360 images; pass --nll-images "
                                          "360 or fewer"),
    (["evaluate", "--vlb-timesteps", "5"], "--vlb-timesteps 5: the variational bound is defined for the DDPM "
                                           "objective, and this run trains with EDMObjective; drop --vlb-timesteps"),
    # the two commands take the same seeds, those of a torch generator (a negative one stood for 2^64 + seed)
    (["sample", "--seed", "-1"], "--seed must lie in [0, 2^64 − 1] (the seeds of a torch generator), got -1"),
    (["evaluate", "--seed", "-3"], "--seed must lie in [0, 2^64 − 1] (the seeds of a torch generator), got -3"),
    (["sample", "--seed", str(2 ** 64)], f"--seed must lie in [0, 2^64 − 1] (the seeds of a torch generator), got "
                                         f"{2 ** 64}"),
])
def test_numbers_are_checked_by_name(checkpoint, capsys, argv, message):
    assert main([*argv, "--checkpoint", str(checkpoint)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sample", "evaluate"])
@pytest.mark.parametrize(("accelerators", "device", "message"), [
    ({}, "meta", "--device 'meta': a meta tensor holds no values, so nothing can be computed on it; use cpu"),
    ({}, "mps", "--device 'mps': this machine (torch "),
    ({}, "cuda", "has no CUDA device; use cpu"),
    ({"cuda": 2}, "cuda:2", "--device 'cuda:2': this machine has 2 cuda device(s); use cpu, cuda or cuda:0 to cuda:1"),
    ({"cuda": 1}, "xla", "cannot run on xla; use cpu or cuda"),
])
def test_a_device_this_machine_cannot_compute_on_is_a_one_line_error(checkpoint, tmp_path, capsys, monkeypatch,
                                                                     command, accelerators, device, message):
    from pynodeta import _cli

    monkeypatch.setattr(_cli, "_accelerators", lambda: accelerators)  # the same machine wherever the test runs
    out = tmp_path / "g.png"
    assert main([command, "--checkpoint", str(checkpoint), "--device", device, "--num", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pynodeta {command}: error: ") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_steps_are_refused_with_a_runs_own_sampler_that_chooses_its_steps(tmp_path, capsys, command):
    from pynodeta.train.diffusion_sampling import OWN_STEP_SAMPLERS
    from pynodeta.train.sample_cli import _OWN_STEPS

    assert set(_OWN_STEPS) == set(OWN_STEP_SAMPLERS)  # every such sampler has its advice
    config = _config()
    config["model"]["init_args"]["evaluation"]["sampler"] = "dpm_adaptive"
    checkpoint, out = _write_run(tmp_path, config), tmp_path / "g.png"
    argv = [command, "--checkpoint", str(checkpoint), "--num", "2", "--out", str(out)]
    assert main([*argv, "--steps", "4"]) == 2
    assert "--steps 4 would be ignored: sampler 'dpm_adaptive'" in capsys.readouterr().err and not out.exists()
    if command == "sample":  # without --steps, the run's sampler draws as configured
        assert main(argv) == 0 and "sampler dpm_adaptive" in capsys.readouterr().out and out.exists()


def test_evaluate_out_none_writes_no_grid_as_in_sample(tmp_path, capsys, monkeypatch):
    checkpoint = _write_run(tmp_path, perturb_ema=False)  # a perturbed EMA's stiff likelihood solve costs 10 s a call
    monkeypatch.chdir(tmp_path)  # where the default grid, evaluation_samples.png, would go
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--num", "2", "--out", "none"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("| no grid")
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--num", "2", "--out", "none", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["grid"] is None
    assert not list(tmp_path.rglob("*.png"))


def test_evaluate_names_the_flag_of_a_vlb_timestep_count_beyond_the_schedule(tmp_path, capsys):
    config = _config()
    config["model"]["init_args"]["objective"] = {"class_path": "pynodeta.train.DDPMObjective"}
    config["model"]["init_args"]["model"]["init_args"]["time_scale"] = 1.0
    checkpoint, out = _write_run(tmp_path, config), tmp_path / "e.png"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--num", "2", "--vlb-timesteps", "1000",
                 "--out", str(out)]) == 2
    assert ("--vlb-timesteps 1000 exceeds the T − 1 = 999 KL terms of this run's schedule; pass at most 999, or "
            "leave --vlb-timesteps out" in capsys.readouterr().err) and not out.exists()


def test_evaluate_json_is_strict_json(tmp_path, capsys):
    # the UNet is not finite-likelihood-checked here: an EDM model without a likelihood is fine, NaN is null
    checkpoint = _write_run(tmp_path, perturb_ema=False)  # a perturbed EMA's stiff likelihood solve costs 10 s
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "e.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))
    assert result["weights"] == "ema" and result["fd"] > 0


# --- evaluate reproduces fit ----------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_reproduces_fits_fd_of_a_shipped_edm2_config_with_its_power_ema(tmp_path, capsys):
    from pynodeta.train import shipped_config_path

    config = yaml.safe_load(shipped_config_path("digits_edm2").read_text())
    config["trainer"].update(max_epochs=1, limit_train_batches=6, max_time=None)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    power_ema = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("PowerFunctionEMACallback"))
    power_ema["init_args"]["snapshot_every"] = 2
    config["model"]["init_args"]["evaluation"].update(num_samples=16, nll_num_images=1, steps=3)
    (tmp_path / "edm2.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(tmp_path / "edm2.yaml"), "--num_threads", "1", "--plots", "false"]) == 0
    run = tmp_path / "digits_edm2" / "version_0"
    fit_fd = json.loads((run / "summary.json").read_text())["fd"]
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert load_run(checkpoint).average_keys() == ("sigma_rel=0.05", "sigma_rel=0.1")
    capsys.readouterr()

    def evaluate(*flags, path=checkpoint):
        assert main(["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "e.png"), "--json",
                     "--config", str(run / "config.yaml"), *flags]) == 0
        return json.loads(capsys.readouterr().out)

    default, tracked, raw = evaluate(), evaluate("--average", "sigma_rel=0.10"), evaluate("--average", "none")
    assert default["weights"] == "sigma_rel=0.1"
    assert default["fd"] == pytest.approx(fit_fd, rel=1e-6, abs=1e-9)
    assert tracked["fd"] == default["fd"]
    assert raw["fd"] != default["fd"]  # the raw weights are another model
    # an untracked width is rebuilt from the run's snapshots, as `pynodeta phema` rebuilds it into a checkpoint
    posthoc = evaluate("--average", "sigma_rel=0.07")
    assert posthoc["weights"].startswith("sigma_rel=0.07 (post hoc from") and posthoc["weights"].endswith("step 6)")
    assert main(["phema", "--snapshots", str(run / "phema"), "--sigma-rel", "0.07", "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "phema.ckpt")]) == 0
    capsys.readouterr()
    written = evaluate(path=tmp_path / "phema.ckpt")
    assert written["weights"] == "sigma_rel=0.07 (post hoc, step 6)" and written["fd"] == posthoc["fd"]
    # written outside the run, the file still loads (its copy of the run's config.yaml), and names its width
    for flags in ([], ["--average", "sigma_rel=0.07"]):
        assert main(["evaluate", "--checkpoint", str(tmp_path / "phema.ckpt"), "--out", str(tmp_path / "e.png"),
                     "--json", *flags]) == 0
        alone = json.loads(capsys.readouterr().out)
        assert alone["weights"] == written["weights"] and alone["fd"] == posthoc["fd"]


def test_a_config_of_other_classes_than_the_runs_own_is_refused_by_sample(tmp_path, capsys):
    """An EDM run's weights under a DDPM config would be drawn with the wrong objective, without error."""
    checkpoint = _write_run(tmp_path)
    other = _config()
    other["model"]["init_args"]["objective"] = {"class_path": "pynodeta.train.DDPMObjective"}
    other_path = tmp_path / "ddpm.yaml"
    other_path.write_text(yaml.safe_dump(other))
    argv = ["sample", "--checkpoint", str(checkpoint), "--steps", "2", "--num", "2", "--out", str(tmp_path / "g.png")]
    assert main([*argv, "--config", str(other_path)]) == 2
    err = capsys.readouterr().err
    assert "builds other classes than the config" in err and "model.objective: DDPMObjective here, EDMObjective in " \
        "the run" in err and "Leave out --config" in err
    assert not (tmp_path / "g.png").exists()
    assert main([*argv, "--config", str(checkpoint.parent.parent / "config.yaml")]) == 0  # its own: drawn
