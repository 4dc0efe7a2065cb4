"""One JSON format for every benchmark's measured tables, so ``docs/results.md`` is generated, never typed.

A benchmark calls ``save_report(...)`` once at the end; ``python3 benchmarks/make_results.py`` then
renders every ``benchmarks/results/*.json`` into ``docs/results.md``. Each report carries the exact
command that produced it and the machine it ran on, so a figure in the docs always has both.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pynodeta._atomic import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# a script's own raw measurements, kept so its report can be rebuilt (``--from-raw``) without re-running;
# make_results reads only the top level of RESULTS_DIR, so nothing here is mistaken for a report
RAW_DIR = RESULTS_DIR / "raw"


@dataclass
class Table:
    """A table of measured figures: ``rows`` hold plain numbers or strings, one entry per column."""

    columns: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""

    def __post_init__(self):
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"row {i} has {len(row)} entries but the table has {len(self.columns)} columns")


@dataclass
class Report:
    name: str                       # file stem, e.g. "bench_solver"
    title: str                      # the section heading in docs/results.md
    command: str                    # the exact command line that produced it
    tables: list[Table]
    notes: list[str] = field(default_factory=list)      # what agrees/disagrees, caveats (one paragraph each)
    plots: list[str] = field(default_factory=list)      # file names inside benchmarks/results/
    machine: dict = field(default_factory=dict)


def machine_facts() -> dict:
    """What the reader needs to judge a timing: CPU count, Python/torch versions, date."""
    facts = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
             "date": time.strftime("%Y-%m-%d")}
    torch = sys.modules.get("torch")
    if torch is not None:
        facts["torch"] = torch.__version__
        facts["threads"] = torch.get_num_threads()
    return facts


def command_line() -> str:
    """The command that is running now, as a user would type it from the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        script = Path("benchmarks") / script.name
    return shlex.join(["python3", script.as_posix(), *sys.argv[1:]])


def save_report(name: str, title: str, tables: Sequence[Table], *, notes: Sequence[str] = (),
                plots: Sequence[str] = (), command: str | None = None,
                directory: Path | str = RESULTS_DIR, machine: dict | None = None) -> Path:
    """Write ``<directory>/<name>.json`` atomically and return its path.

    ``machine`` overrides entries of :func:`machine_facts` (a report built from raw data passes
    :func:`raw_machine`: the facts of the run that measured it).
    """
    report = Report(name=name, title=title, command=command or command_line(), tables=list(tables),
                    notes=list(notes), plots=list(plots), machine={**machine_facts(), **(machine or {})})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    _write_json_atomically(path, asdict(report))
    return path


def _write_json_atomically(path: Path, data: dict) -> None:
    """``data`` as indented JSON in ``path``: a reader never sees half a file."""
    atomic_write_text(path, json.dumps(data, indent=1, default=float) + "\n")


def synchronize(device) -> None:
    """Wall times of GPU work need the device's queue drained; on the CPU this is a no-op."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed_on(device, work) -> float:
    """Wall seconds of ``work()``, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def save_device_report(name: str, title: str, tables: Sequence[Table], notes: list[str], raw: dict,
                       directory: Path) -> Path:
    """The report of a timing script's ``raw`` record: ``<name>_cuda`` for a GPU run (see :func:`device_report`),
    the run's own ``--note`` after ``notes``, the command and machine that measured it."""
    if raw.get("note"):
        notes = [*notes, raw["note"]]
    name, title = device_report(name, title, raw)
    return save_report(name, title, tables, notes=notes, command=raw["command"], directory=directory,
                       machine=raw_machine(raw))


def save_device_run(name: str, record: dict, directory: Path, build) -> Path:
    """Write a timing script's ``record`` as its raw file (``<name>_cuda`` for a GPU run, see
    :func:`device_report`) under ``directory/raw``, then its report, built from that file by ``build(raw,
    directory)``, so a committed report always rebuilds from its raw record."""
    raw = save_raw(device_report(name, "", record)[0], record, Path(directory) / "raw")
    path = build(load_raw(raw), directory)
    print(path)
    return path


def device_report(name: str, title: str, raw: dict) -> tuple[str, str]:
    """(report name, title) of a run on ``raw['device']``: a GPU run gets its own report beside the CPU one."""
    device = raw.get("device", "cpu")
    if device == "cpu":
        return name, title
    return f"{name}_{device}", f"{title}, on {raw.get('device_name', device)}"


def device_record(device: str) -> dict:
    """What a raw record says about the device it was measured on (nothing for the CPU)."""
    if device != "cuda":
        return {}
    import torch

    return {"device": device, "device_name": torch.cuda.get_device_name()}


def save_raw(name: str, data: dict, directory: Path | str = RAW_DIR) -> Path:
    """Write a script's raw measurements to ``<directory>/<name>.json``, with the command that made them and
    the facts of the machine that ran it (see :func:`raw_machine`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    record = {"command": command_line(), "machine": machine_facts(), **data}
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    return path


def raw_machine(raw: dict, **overrides) -> dict:
    """The machine facts for a report built from ``raw``: those of the machine that measured it (a report
    rebuilt elsewhere, e.g. a GPU run's on a CPU machine, must not take the rebuilding machine's), then
    ``overrides``."""
    facts = raw.get("machine")
    return {**(facts if isinstance(facts, dict) else {}), **overrides}  # seed004's raw files keep a line of text


def load_raw(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())


def kept_record(path: Path, settings: dict, compute) -> dict:
    """``{"settings": settings, **compute()}``, kept in ``path`` (written atomically) so that a long run that stops
    resumes: a kept record with the same settings is read back instead of computed again."""
    path = Path(path)
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("settings") == settings:
            print(f"read back from {path}", flush=True)
            return record
    record = {"settings": settings, **compute()}
    _write_json_atomically(path, record)
    return record


def paired_timing_ratio(numerator, denominator) -> dict[str, float]:
    """Two series of per-round timings taken alternately: each one's median, the ratio of the medians, and the
    10th and 90th percentiles of the per-round ratios (how much load on the machine moved them)."""
    numerator, denominator = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    top, bottom = float(np.median(numerator)), float(np.median(denominator))
    p10, p90 = np.percentile(numerator / denominator, [10, 90])
    return {"numerator": top, "denominator": bottom, "ratio": top / bottom, "p10": float(p10), "p90": float(p90)}


def add_from_raw(parser, skipped: str) -> None:
    """``--from-raw FILE``: rebuild the report from an earlier run's raw file instead of ``skipped`` again."""
    parser.add_argument("--from-raw", type=Path, default=None,
                        help=f"rebuild the report from a raw file written by an earlier run, without {skipped}")


def rebuilt_from_raw(args, build) -> bool:
    """With ``--from-raw``: print the report that ``build(raw)`` saves from that file and return True."""
    if args.from_raw is None:
        return False
    print(build(load_raw(args.from_raw)))
    return True


def add_timing_arguments(parser, repeats: int) -> None:
    """The options of the solver timing scripts (bench_solver, bench_batched), ``--from-raw`` included."""
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workloads", nargs="*", default=None, help="substrings of workload names to run")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the workloads run")
    parser.add_argument("--note", default=None, help="a note on the run (e.g. the machine's load) for the report")
    add_from_raw(parser, "measuring")


def load_report(path: Path | str) -> Report:
    data = json.loads(Path(path).read_text())
    missing = {"name", "title", "command", "tables"} - set(data)
    if missing:
        raise ValueError(f"{path}: not a benchmark report, missing {sorted(missing)}")
    tables = [Table(**t) for t in data.pop("tables")]
    return Report(tables=tables, **data)
