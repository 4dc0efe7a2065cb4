"""Training-curve plots: written at the end of ``pynodeta fit`` and by ``pynodeta plot RUN_DIR`` from
the run's metrics.csv, with a clear error when matplotlib or the metrics are missing."""

from __future__ import annotations

import csv
import sys

import pytest

from pynodeta.cli import main
from pynodeta.train.plots import metric_panels, read_metrics

from .test_cli import _write_config

PANELS = {"loss", "acc", "tabn_reg", "nfe"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A two-epoch, one-batch-per-epoch fit through the command; returns its log directory."""
    tmp_path = tmp_path_factory.mktemp("run")

    def two_epochs(config):
        config["trainer"]["max_epochs"] = 2

    assert main(["fit", "--config", _write_config(tmp_path, two_epochs), "--test_after_fit", "true"]) == 0
    return tmp_path / "runs" / "lightning_logs" / "version_0"


def test_fit_writes_one_png_per_metric_beside_the_metrics(tiny_run):
    from matplotlib.image import imread

    for panel in PANELS:
        image = imread(tiny_run / f"{panel}.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_panels_hold_the_logged_epoch_means(tiny_run):
    with open(tiny_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    series = read_metrics(tiny_run)
    expected = [(float(r["epoch"]), float(r["train/nfe_backward"])) for r in rows if r.get("train/nfe_backward")]
    assert list(zip(*series["train/nfe_backward"])) == expected and len(expected) == 2  # one per epoch
    panels = metric_panels(series)
    assert set(panels) == PANELS  # test metrics (one point) are not plotted
    assert set(panels["nfe"]) == {"train/nfe_forward", "train/nfe_backward", "val/nfe_forward"}
    assert set(panels["loss"]) == {"train/loss", "val/loss"}


def test_plot_command_writes_the_pngs_where_asked(tiny_run, tmp_path, capsys):
    # the logger's name directory is accepted too: its newest version is plotted
    assert main(["plot", str(tiny_run.parent), "--out", str(tmp_path)]) == 0
    assert {p.stem for p in tmp_path.glob("*.png")} == PANELS
    assert str(tmp_path / "nfe.png") in capsys.readouterr().out


def test_plot_command_errors_name_the_fix(tmp_path, tiny_run, monkeypatch, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics.csv in" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    assert main(["plot", str(tiny_run), "--out", str(tmp_path)]) == 2
    assert "pip install 'pynodeta[plot]'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("content, message", [
    (b"", "is empty: no header, no rows"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "is not a CSV text file"),
    (b"epoch,step,train/loss\n0,0,abc\n", "line 2, column 'train/loss': 'abc' is not a number"),
    (b"epoch,step,train/loss\nzero,0,0.5\n", "column 'epoch': 'zero' is not a number"),
    (b"epoch,step,train/loss\n", "has a header but no logged values yet: nothing to plot"),
])
def test_plot_command_refuses_an_unplottable_metrics_file_in_one_line(tmp_path, capsys, content, message):
    """These used to exit 0 with no plot (empty, header only) or end in a traceback (binary, text values)."""
    from pynodeta.train.plots import main as plot_main

    (tmp_path / "metrics.csv").write_bytes(content)
    assert plot_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pynodeta plot: error: {tmp_path / 'metrics.csv'}: ") and message in err
    assert err.count("\n") == 1 and not list(tmp_path.glob("*.png"))
