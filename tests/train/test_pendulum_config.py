"""The shipped pendulum_tabn config trains: with BatchNorm's eps its adjoint state grew without bound in the first
epoch and the backward solve stalled (a fit that never ended)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest


@pytest.mark.slow  # a subprocess fit of 14 steps
def test_the_shipped_pendulum_config_trains_two_epochs_with_finite_losses(tmp_path):
    command = [sys.executable, "-m", "pynodeta.cli", "fit", "--config", "pendulum_tabn", "--trainer.max_epochs", "2",
               "--test_after_fit", "false", "--plots", "false", "--trainer.enable_progress_bar", "false",
               "--trainer.logger.init_args.save_dir", str(tmp_path)]
    # a stalled backward solve never returns: the timeout turns it into a failure (it ran 14 steps in ~10 s)
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "pendulum_tabn" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(row["train/loss"]) for row in rows if row.get("train/loss")]  # one per epoch
    assert [int(row["step"]) for row in rows if row.get("train/loss")] == [6, 13]
    assert all(math.isfinite(loss) for loss in losses) and losses[1] < losses[0]
