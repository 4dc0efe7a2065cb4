"""``pynodeta diagnose``: exit status 1 when time vanishes, 0 when it survives, 2 on bad input."""

import json
import math

import pytest
import torch

from pynodeta.cli import main as pynodeta_main
from pynodeta.diagnose.cli import main

from .tiny_models import TinyClassifierModule, TinyNODE


@pytest.fixture
def checkpoints(tmp_path):
    torch.manual_seed(0)
    example = torch.randn(6, 1, 8, 8)
    paths = {}
    for name, model in [("bn", TinyNODE("bn")), ("gn", TinyNODE("gn")),
                        ("additive-bn", TinyNODE("bn", injection="additive"))]:
        paths[name] = tmp_path / f"{name}.pt"
        torch.save({"model": model, "example_input": example}, paths[name])
    paths["bare"] = tmp_path / "bare.pt"
    torch.save(TinyNODE("gn"), paths["bare"])
    return paths


UNSAFE = "--unsafe-load"  # the fixtures are whole pickled modules, which a safe load refuses


@pytest.mark.parametrize("mode", [[], ["--train-mode"]])
def test_vanishing_time_exits_1_and_prints_the_table(checkpoints, capsys, mode):
    status = main(["--checkpoint", str(checkpoints["additive-bn"]), UNSAFE, *mode])
    out = capsys.readouterr().out
    assert status == 1
    assert f"time awareness of ode.func ({'train' if mode else 'eval'} mode" in out
    assert "VANISHING: time is cancelled at 2" in out


def test_the_threshold_decides_whether_a_border_leak_fails(checkpoints, capsys):
    # ConcatConv with zero padding into BN: only the border passes, a partial survival.
    assert main(["--checkpoint", str(checkpoints["bn"]), UNSAFE]) == 0
    assert "partial" in capsys.readouterr().out
    assert main(["--checkpoint", str(checkpoints["bn"]), UNSAFE, "--threshold", "0.45"]) == 1


def test_surviving_time_exits_0(checkpoints, capsys):
    assert main(["--checkpoint", str(checkpoints["gn"]), UNSAFE, "--times", "0", "0.5", "1"]) == 0
    assert "t = 0, 0.5, 1" in capsys.readouterr().out


def test_json_output_is_machine_readable(checkpoints, capsys):
    status = main(["--checkpoint", str(checkpoints["gn"]), UNSAFE, "--json", "--batch-size", "4"])
    data = json.loads(capsys.readouterr().out)
    assert status == 0 and data["vanishing"] is False
    (report,) = data["reports"]
    assert report["subject"] == "ode.func"
    assert [f["role"] for f in report["findings"]] == ["time entry", "normalisation"]


def test_a_bare_module_needs_an_input_shape(checkpoints, capsys):
    assert main(["--checkpoint", str(checkpoints["bare"]), UNSAFE]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["--checkpoint", str(checkpoints["bare"]), UNSAFE, "--input-shape", "1", "8", "8"]) == 0


def test_the_pynodeta_command_dispatches_to_diagnose(checkpoints, capsys):
    assert pynodeta_main(["diagnose", "--checkpoint", str(checkpoints["gn"]), UNSAFE, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vanishing"] is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "pass --config CONFIG.yaml, --checkpoint CKPT, or both"),
        (["--checkpoint", "missing.pt"], "does not exist"),
        (["--checkpoint", "{bn}", "--batch-size", "99"], "exceeds the 6 rows"),
        (["--checkpoint", "{bn}", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--checkpoint", "{bn}", "--times", "0.5"], "at least two distinct"),
        (["--checkpoint", "{bn}", "--module", "head"], "neither an ODE block"),
        (["--checkpoint", "{bn}", "--threshold", "2"], "threshold must be"),
        (["--checkpoint", "{bare}", "--input-shape", "3", "8", "8"], "pynodeta diagnose: error"),
    ],
)
def test_bad_input_exits_2_with_a_message(checkpoints, capsys, argv, message):
    argv = [a.format(**{k: str(v) for k, v in checkpoints.items()}) for a in argv] + [UNSAFE]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


CONFIG = """\
model:
  class_path: tests.diagnose.tiny_models.TinyClassifierModule
  init_args:
    norm: {norm}
    injection: additive
data:
  class_path: pynodeta.data.DigitsDataModule
  init_args:
    batch_size: 16
    eval_batch_size: 16
trainer:
  max_epochs: 1
"""


def test_a_config_builds_model_and_data_and_a_checkpoint_supplies_weights(tmp_path, capsys):
    config = tmp_path / "tabn.yaml"
    config.write_text(CONFIG.format(norm="tabn"))
    # Freshly built, TA-BN's γ(t) = 1, β(t) = 0 at every grid point: plain BN, time cancelled.
    assert main(["--config", str(config), "--module", "model.ode.func", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["reports"][0]["subject"] == "model.ode.func"
    torch.manual_seed(0)
    trained = TinyClassifierModule("tabn", "additive")
    with torch.no_grad():
        trained.model.ode.func[2].weight.uniform_(0.5, 1.5)
        trained.model.ode.func[2].bias.normal_()
    checkpoint = tmp_path / "trained.ckpt"
    torch.save({"state_dict": trained.state_dict()}, checkpoint)
    assert main(["--config", str(config), "--checkpoint", str(checkpoint), "--batch-size", "8"]) == 0
    assert "time awareness of model.ode.func" in capsys.readouterr().out


def _lightning_checkpoint(path, module, datamodule_class_path=None):
    # What a LightningCLI run writes: hyperparameters naming the classes, and the weights.
    checkpoint = {"state_dict": module.state_dict(), "pytorch-lightning_version": "2.6.0",
                  "hyper_parameters": {"_class_path": "tests.diagnose.tiny_models.TinyClassifierModule",
                                       **module.hparams}}
    if datamodule_class_path is not None:
        checkpoint["datamodule_hyper_parameters"] = {"_class_path": datamodule_class_path, "batch_size": 16}
    torch.save(checkpoint, path)


def test_a_lightning_checkpoint_alone_rebuilds_model_and_data(tmp_path, capsys):
    torch.manual_seed(0)
    module = TinyClassifierModule("bn", "additive")
    _lightning_checkpoint(tmp_path / "a.ckpt", module, "pynodeta.data.DigitsDataModule")
    allow = ["--allow-module", "tests.diagnose"]  # the test's own module classes must be allowed explicitly
    assert main(["--checkpoint", str(tmp_path / "a.ckpt"), "--module", "model.ode.func", *allow]) == 1
    assert "VANISHING" in capsys.readouterr().out
    _lightning_checkpoint(tmp_path / "b.ckpt", module)           # no data: a random batch of a given shape
    assert main(["--checkpoint", str(tmp_path / "b.ckpt"), "--input-shape", "1", "8", "8", *allow]) == 1
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {}}, tmp_path / "c.ckpt")
    assert main(["--checkpoint", str(tmp_path / "c.ckpt")]) == 2
    assert "pass the training config as well" in capsys.readouterr().err


def test_a_bad_config_exits_2(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text(CONFIG.format(norm="bn").replace("batch_size: 16", "batch_sise: 16"))
    assert main(["--config", str(config)]) == 2
    assert "batch_sise" in capsys.readouterr().err
    config.write_text("trainer:\n  max_epochs: 1\n")
    assert main(["--config", str(config)]) == 2
    assert "has no model and no data section" in capsys.readouterr().err


def test_a_file_that_is_not_a_model_is_refused(tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save([1, 2, 3], path)
    assert main(["--checkpoint", str(path)]) == 2  # plain data: no --unsafe-load needed to see what it is
    assert "holds a list; expected a Lightning checkpoint" in capsys.readouterr().err


def test_a_shipped_config_is_found_by_name(capsys):
    assert main(["--config", "digits_tabn", "--json", "--batch-size", "8"]) == 0
    (report,) = json.loads(capsys.readouterr().out)["reports"]
    assert report["subject"] == "model.ode.func"
    assert {f["kind"] for f in report["findings"]} == {"ConcatConv2d", "TABatchNorm2d"}
    assert main(["--config", "no_such_config"]) == 2
    assert "shipped configs: " in capsys.readouterr().err


def test_times_outside_an_ode_blocks_span_are_refused(capsys):
    """digits_tabn integrates over [0, 1]: its TA-BN layers clamp t = 2, 3 to 1, and the audit blamed them."""
    assert main(["--config", "digits_tabn", "--batch-size", "8", "--times", "0", "1", "2", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pynodeta diagnose: error: times [2.0, 3.0] lie outside model.ode's span [0, 1]") and \
        "pass times within [0, 1]" in err
    assert main(["--config", "digits_tabn", "--batch-size", "8", "--times", "0", "0.5", "1"]) == 0  # inside: audited


def test_a_missing_dataset_exits_2_not_1_which_means_vanishing_time(tmp_path, capsys):
    status = main(["--config", "seed001_cifar10_bn", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("pynodeta diagnose: error:") and "Traceback" not in err


def test_a_checkpoint_of_pynodeta_fit_is_audited_with_the_config_saved_beside_it(tmp_path, capsys):
    from pynodeta.train.cli import main as fit_main

    status = fit_main(["fit", "--config", "digits_tabn", "--trainer.max_epochs", "1",
                       "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                       "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
                       "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert status == 0
    (checkpoint,) = tmp_path.glob("digits_tabn/version_0/checkpoints/last.ckpt")
    capsys.readouterr()
    assert main(["--checkpoint", str(checkpoint), "--json", "--batch-size", "8"]) == 0
    (report,) = json.loads(capsys.readouterr().out)["reports"]
    assert report["subject"] == "model.ode.func"


def test_a_diffusion_network_is_audited_as_the_time_aware_function(capsys):
    """A diffusion config's network takes forward(t, x) itself: the command audits it at the data's
    input (no ODE block needed) and finds the positional embeddings of the digits_ddpm U-Net."""
    status = main(["--config", "digits_ddpm", "--batch-size", "4", "--json"])
    assert status in (0, 1)  # at initialisation the zero-initialised output layers hide time
    reports = json.loads(capsys.readouterr().out)["reports"]
    assert len(reports) == 1 and reports[0]["subject"] == "model"
    entries = [f["kind"] for f in reports[0]["findings"] if f["role"] == "time entry"]
    assert "PositionalTimestepEmbedding" in entries


@pytest.mark.parametrize("config, expected", [
    ("digits_ddpm", [0.0, 249.75, 499.5, 749.25, 999.0]),  # DDPM timesteps 0 … T − 1, T = 1000
    # EDM: c_noise = ln(σ)/4 at log-spaced σ over [0.002, 80]
    ("digits_edm", [math.log(0.002) / 4 + i / 4 * (math.log(80.0) - math.log(0.002)) / 4 for i in range(5)]),
])
def test_a_diffusion_network_is_audited_over_the_times_it_is_used_with(capsys, config, expected):
    assert main(["--config", config, "--batch-size", "2", "--json"]) in (0, 1)
    (report,) = json.loads(capsys.readouterr().out)["reports"]
    assert report["times"] == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_a_bare_network_is_audited_over_its_declared_time_range():
    from pynodeta.diagnose.time_ranges import diffusion_times
    from pynodeta.models import DDPMUNet
    from pynodeta.models.diffusion import EDM2UNet

    unet = DDPMUNet(image_size=8, channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(),
                    time_scale=250.0)
    assert diffusion_times(unet, unet) == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    edm2 = EDM2UNet(8, 1, model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=())
    assert diffusion_times(edm2, edm2, points=2) == pytest.approx([math.log(0.002) / 4, math.log(80.0) / 4])
    assert diffusion_times(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)) is None


def _tabn_rows(report):
    return [f["layer"] for f in report["findings"] if f["kind"] == "TABatchNorm1d" and f["role"] == "normalisation"]


@pytest.mark.parametrize("module", [[], ["--module", "model.ode"], ["--module", "model.ode.func"]])
def test_a_trajectory_model_is_run_as_its_module_runs_it_on_a_batch(capsys, module):
    """pendulum_tabn's network takes forward(t0, y0, t_grid): TrajectoryRegressor.model_inputs gives them
    from a (t, y0, y_traj) batch, and the ODE block's TA-BN layers are audited at the y0 it receives."""
    status = main(["--config", "pendulum_tabn", "--batch-size", "8", "--json", *module])
    assert status in (0, 1)  # freshly built, TA-BN's γ(t) = 1, β(t) = 0: plain BN, time cancelled
    (report,) = json.loads(capsys.readouterr().out)["reports"]
    assert report["subject"] == "model.ode.func"
    assert _tabn_rows(report) == ["layers.1", "layers.4"]
    assert report["times"] == [0.0, 1.25, 2.5, 3.75, 5.0]  # the data's time grid, [0, 5]


@pytest.mark.parametrize("module", [[], ["--module", "model.ode"], ["--module", "model.ode.func"]])
def test_times_outside_a_trajectory_models_grid_are_refused(capsys, module):
    """Also when the right-hand side is named: the span is its ODE block's."""
    assert main(["--config", "pendulum_tabn", "--batch-size", "8", "--times", "0", "5", "6", *module]) == 2
    assert capsys.readouterr().err.startswith("pynodeta diagnose: error: times [6.0] lie outside model.ode's span "
                                              "[0, 5]")


def test_the_batch_of_a_config_holds_the_first_samples_of_its_test_split(capsys):
    # pendulum_tabn's test split holds 26 trajectories, in loader batches of 32
    assert main(["--config", "pendulum_tabn", "--batch-size", "27"]) == 2
    assert "--batch-size 27 exceeds the 26 samples of the test split" in capsys.readouterr().err


def test_a_checkpoint_of_a_trajectory_run_is_audited_with_or_without_its_config(tmp_path, capsys):
    from pynodeta.train.cli import main as fit_main

    status = fit_main(["fit", "--config", "pendulum_tabn", "--trainer.max_steps", "2", "--plots", "false",
                       "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
                       "--test_after_fit", "false", "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert status == 0
    (checkpoint,) = tmp_path.glob("pendulum_tabn/version_0/checkpoints/last.ckpt")
    capsys.readouterr()
    for config in [[], ["--config", "pendulum_tabn"]]:
        assert main(["--checkpoint", str(checkpoint), *config, "--json", "--batch-size", "8"]) in (0, 1)
        (report,) = json.loads(capsys.readouterr().out)["reports"]
        assert report["subject"] == "model.ode.func" and _tabn_rows(report) == ["layers.1", "layers.4"]
        assert report["times"] == [0.0, 1.25, 2.5, 3.75, 5.0]
