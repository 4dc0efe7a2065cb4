"""Plots of a run's logged metrics over training: ``pynodeta plot RUN_DIR``.

Reads the ``metrics.csv`` that Lightning's CSVLogger writes (the shipped configs' logger; each
row holds the epoch means logged at the end of an epoch) and writes one PNG per metric beside
it: ``loss.png`` (train and val), one per other metric (``acc.png``, ``mse.png``, ...) and
``nfe.png`` (forward and backward function evaluations per batch). matplotlib is optional
(``pip install 'pynodeta[plot]'``); only its object API is used, so no global backend is set.

A ``metrics.csv`` that cannot be plotted (empty, binary, a value that is not a number, or a header
with no rows yet) is a ``MetricsFileError`` naming the file: ``pynodeta plot`` prints it on one line
and exits with status 2 (a header alone counts too: a run that has logged nothing has nothing to
plot, and exit 0 with no PNG would read as success); after ``pynodeta fit`` it is a note.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

__all__ = ["read_metrics", "metric_panels", "plot_run", "plot_after_fit", "MatplotlibMissingError",
           "MetricsFileError", "main"]

METRICS_FILE = "metrics.csv"
NFE_PANEL = "nfe"
Series = dict[str, tuple[list[float], list[float]]]  # {logged key: (epochs, values)}


class MatplotlibMissingError(ImportError):
    """Plotting was asked for but matplotlib is not installed."""


def _metrics_file(run_dir: Path) -> Path:
    """``run_dir/metrics.csv``, or that of its newest ``version_N`` (a CSVLogger's name directory)."""
    if (run_dir / METRICS_FILE).is_file():
        return run_dir / METRICS_FILE
    numbered = [p for p in run_dir.glob("version_*") if p.name[len("version_"):].isdigit()]
    versions = sorted((p for p in numbered if (p / METRICS_FILE).is_file()), key=lambda p: int(p.name[8:]))
    if versions:
        return versions[-1] / METRICS_FILE
    raise FileNotFoundError(
        f"no {METRICS_FILE} in {run_dir} or its version_* directories; pass the run's log directory "
        f"(e.g. runs/digits_tabn/version_0), written by a config with lightning's CSVLogger")


class MetricsFileError(ValueError):
    """``metrics.csv`` exists but cannot be plotted: empty, not text, not numbers, or no rows yet."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path


def read_metrics(run_dir: str | Path) -> Series:
    """Every logged metric of a run as ``{key: (epochs, values)}``, in the order the CSV holds them.

    Rows without a value for a key are skipped (train and val metrics are logged on separate rows).
    Raises MetricsFileError naming the file when it is empty, not UTF-8 text, holds a value that is not
    a number, or has a header but no rows yet (a run that has not finished an epoch: nothing to plot).
    """
    path = _metrics_file(Path(run_dir))
    try:
        with open(path, newline="", encoding="utf-8") as f:
            series = _read_series(path, csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as error:  # binary bytes, NUL characters
        raise MetricsFileError(path, f"is not a CSV text file ({error}); it should be the metrics.csv that "
                                     "lightning's CSVLogger writes") from None
    return series


def _read_series(path: Path, rows: csv.DictReader) -> Series:
    if rows.fieldnames is None:
        raise MetricsFileError(path, "is empty: no header, no rows (was the run killed before it logged?)")
    series: Series = defaultdict(lambda: ([], []))
    for row in rows:
        line = rows.line_num
        epoch = _number(path, line, "epoch", row["epoch"]) if row.get("epoch") else math.nan
        for key, value in row.items():
            if key in ("epoch", "step") or value in (None, ""):
                continue
            epochs, values = series[key]
            epochs.append(epoch)
            values.append(_number(path, line, key, value))
    if not series:
        raise MetricsFileError(path, "has a header but no logged values yet: nothing to plot (plot again once "
                                     "the run has logged an epoch)")
    return dict(series)


def _number(path: Path, line: int, key: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # TypeError: a row with more fields than the header gives a list
        raise MetricsFileError(path, f"line {line}, column {key!r}: {value!r} is not a number") from None


def metric_panels(series: Series) -> dict[str, Series]:
    """Group logged keys into panels: ``{panel name: {key: (epochs, values)}}``.

    ``{stage}/{name}`` goes to panel ``name`` (so train and val loss share ``loss``), every
    ``*/nfe_*`` key to ``nfe``. Test metrics (one point after training) are left out.
    """
    panels: dict[str, Series] = defaultdict(dict)
    for key, data in series.items():
        stage, _, name = key.rpartition("/")
        if stage == "test":
            continue
        panels[NFE_PANEL if name.startswith("nfe") else name][key] = data
    return dict(panels)


def _require_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MatplotlibMissingError(
            "plots need matplotlib, which is not installed; install it with pip install 'pynodeta[plot]' "
            "(or pip install matplotlib)") from None
    return Figure


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``{panel}.png`` for every panel of the run's metrics; returns the paths written.

    out_dir: where the PNGs go (default: beside ``metrics.csv``). Raises MatplotlibMissingError
    without matplotlib, FileNotFoundError without a metrics file, MetricsFileError for one that
    cannot be plotted.
    """
    figure_class = _require_matplotlib()
    csv_path = _metrics_file(Path(run_dir))
    target = Path(out_dir) if out_dir is not None else csv_path.parent
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for panel, data in metric_panels(read_metrics(csv_path.parent)).items():
        figure = figure_class(figsize=(5.0, 3.2), layout="constrained")
        axes = figure.add_subplot()
        for key, (epochs, values) in data.items():
            axes.plot(epochs, values, marker="o", markersize=3, label=key)
        axes.set_xlabel("epoch")
        axes.set_ylabel("function evaluations per batch" if panel == NFE_PANEL else panel)
        axes.set_title(f"{panel} over training (epoch means)")
        axes.legend(fontsize="small")
        path = target / f"{panel.replace('/', '_')}.png"
        figure.savefig(path, dpi=100)
        written.append(path)
    return written


def plot_after_fit(trainer) -> list[Path]:
    """What ``pynodeta fit`` does at its end: the plots beside the run's ``metrics.csv`` (rank 0 only).

    Nothing without a CSV logger; without matplotlib a one-line note instead of the plots.
    """
    log_dir = trainer.log_dir
    if not trainer.is_global_zero or log_dir is None or not (Path(log_dir) / METRICS_FILE).is_file():
        return []
    try:
        paths = plot_run(log_dir)
    except (MatplotlibMissingError, MetricsFileError) as error:  # the fit itself succeeded: a note, no failure
        print(f"pynodeta: no plots: {error}", file=sys.stderr)
        return []
    print(f"pynodeta: plots of the training curves in {log_dir} ({', '.join(p.name for p in paths)})",
          file=sys.stderr)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``pynodeta plot RUN_DIR [--out DIR]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="pynodeta plot",
        description="PNG plots of a run's loss, metrics and forward/backward NFE over training, "
                    "from the metrics.csv of its CSVLogger.")
    parser.add_argument("run_dir", help="the run's log directory (holding metrics.csv), or its logger "
                                        "name directory (the newest version_N is used)")
    parser.add_argument("--out", default=None, help="directory for the PNGs (default: beside metrics.csv)")
    args = parser.parse_args(argv)
    try:
        paths = plot_run(args.run_dir, args.out)
    except (MatplotlibMissingError, FileNotFoundError, MetricsFileError) as error:
        print(f"pynodeta plot: error: {error}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
