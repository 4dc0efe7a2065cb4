"""``pynodeta fit --trainer.devices 2 --trainer.strategy ddp`` on CPU (two gloo processes) for every diffusion
objective: it finishes (digits_edm2 used to wait for good at its first power-EMA snapshot), writes one run
folder with one set of checkpoints and snapshots, keeps the ranks' weights, EMAs and timestep-sampler state
equal, draws different noise on each rank, and takes the step one process takes on the same global batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import pynodeta
from pynodeta.train.run_loader import build_from_config
from tests.equal_states import assert_equal_states

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
CONFIGS = Path(pynodeta.__file__).parent / "configs"
MAX_STEPS = 4


def _tiny_ddp_config(name: str, tmp_path: Path) -> Path:
    """The shipped config, for 4 steps on two ranks (8 images each), evaluated on a few images."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(devices=2, strategy="ddp", max_steps=MAX_STEPS, max_time=None, check_val_every_n_epoch=1000,
                   enable_checkpointing=True)
    trainer["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("PowerFunctionEMACallback"):
            callback["init_args"]["snapshot_every"] = 2
    trainer["callbacks"].append({"class_path": "tests.train.ddp_probe.RankStateProbe",
                                 "init_args": {"out_dir": str(tmp_path / "ranks")}})
    module = config["model"]["init_args"]
    module["evaluation"].update(every_n_epochs=0, num_samples=4, nll_num_images=0)
    if name == "digits_ddpm":  # a loss-aware sampler: its history gathers every rank's losses
        module["objective"]["init_args"]["timestep_sampler"] = "importance"
    config["data"]["init_args"]["batch_size"] = 8
    path = tmp_path / f"{name}_ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")])}
    try:
        return subprocess.run([sys.executable, "-m", "pynodeta.cli", "fit", "--config", str(config)], cwd=tmp_path,
                              env=environment, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"pynodeta fit under DDP did not finish in 300 s (a collective waiting on one rank?); "
                             f"stderr: {(error.stderr or b'')[-2000:]!r}") from None


def _first_optimizer(configured):
    if isinstance(configured, dict):
        return configured["optimizer"]
    return configured[0][0] if isinstance(configured, tuple) else configured


def _one_process_step(config: Path, ranks: list[dict]):
    """The first optimiser step taken in one process on the two ranks' batches together, each half with the
    draws its rank made: the gradient of ``(loss(half 0) + loss(half 1)) / 2``, what DDP's averaging gives."""
    module, _ = build_from_config(config)
    optimizer = _first_optimizer(module.configure_optimizers())
    for rank in ranks:
        # each rank's forward starts from the same weights; EDM2's renormalises them in place (forced weight
        # normalisation), so the second half starts again from the weights DDP started from
        module.load_state_dict(ranks[0]["initial_module"])
        torch.set_rng_state(rank["rng_before_first_step"])
        with warnings.catch_warnings():  # training_step's self.log, here without a trainer
            warnings.filterwarnings("ignore", message=".*self.log.*")
            loss = module.training_step(rank["first_batch"], 0)
        (loss / len(ranks)).backward()
    module.optim.clip(module.model)
    optimizer.step()
    return module.state_dict()


@pytest.mark.parametrize("name", ["digits_ddpm", "digits_edm", "digits_edm2"])
def test_two_gloo_ranks_fit_every_diffusion_objective_as_one_process_would(name, tmp_path):
    config = _tiny_ddp_config(name, tmp_path)
    result = _fit(config, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    runs = [path for path in (tmp_path / "runs" / name).iterdir() if path.is_dir()]
    assert [path.name for path in runs] == ["version_0"], "every rank must write into rank 0's one run folder"
    run = runs[0]
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (run / "samples_final.png").is_file() and (run / "summary.json").is_file()
    assert result.stdout.count("pynodeta summary:") == 1  # printed by rank 0 alone
    if name == "digits_edm2":  # written by rank 0, at steps 2 and 4, and readable
        assert sorted(path.name for path in (run / "phema").iterdir()) == ["phema-0000000002.pt",
                                                                          "phema-0000000004.pt"]

    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for key in ("module", "timestep_sampler", "ema", "power_ema"):
        assert_equal_states(ranks[0][key], ranks[1][key], key)
    if name == "digits_edm2":
        assert ranks[0]["power_ema"]["run_id"] == ranks[1]["power_ema"]["run_id"]
    if name == "digits_ddpm":  # the importance sampler's loss history holds both ranks' losses
        assert ranks[0]["timestep_sampler"] is not None
    # each rank draws its own noise: the generators differ, the data halves too
    assert not torch.equal(ranks[0]["rng_before_first_step"], ranks[1]["rng_before_first_step"])
    assert not torch.equal(ranks[0]["first_batch"][0], ranks[1]["first_batch"][0])

    expected = _one_process_step(config, ranks)
    for key, value in ranks[0]["module_after_first_step"].items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=f"{key} after the first step")



def test_the_main_job_fits_and_tests_on_two_gloo_ranks_and_both_exit_cleanly(tmp_path):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "pynodeta.cli", "fit", "--config", "digits_tabn",
                             "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "4",
                             "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")],
                            cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("pynodeta summary: test accuracy") == 1
    assert result.stderr.count("pynodeta: finished in") == 1  # rank 0 alone
