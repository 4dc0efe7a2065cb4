"""The benchmark report format and the docs/results.md generator."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


reporting = _load("reporting")
make_results = _load("make_results")


def test_report_round_trip_and_rendering(tmp_path):
    table = reporting.Table(["workload", "ratio"], [["(a) forward", 0.5712], ["(b) adjoint", 0.61]], caption="c")
    path = reporting.save_report("demo", "Demo benchmark", [table], notes=["agrees with the paper"],
                                 plots=["demo.png"], command="python3 benchmarks/demo.py --x 1", directory=tmp_path)
    report = reporting.load_report(path)
    assert report.tables[0].rows[1] == ["(b) adjoint", 0.61]
    text = make_results.render(tmp_path)
    assert "## Demo benchmark" in text
    assert "`python3 benchmarks/demo.py --x 1`" in text
    assert "| (a) forward | 0.5712 |" in text
    assert "- agrees with the paper" in text
    assert "![Demo benchmark](../benchmarks/results/demo.png)" in text
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left behind


def test_a_report_rebuilt_from_raw_keeps_the_measuring_machine(tmp_path, monkeypatch):
    """A raw file records the machine that measured it; a report rebuilt from it elsewhere (a GPU run's, on
    a CPU machine) states that machine, not the rebuilding one."""
    path = reporting.save_raw("demo", {"threads": 1, "rows": []}, directory=tmp_path)
    raw = reporting.load_raw(path)
    assert raw["machine"] == {**reporting.machine_facts(), "date": raw["machine"]["date"]}
    raw["machine"] = {"cpus": 16, "torch": "2.11.0+cu130", "python": "3.12.3"}
    monkeypatch.setattr(reporting, "machine_facts", lambda: {"cpus": 2, "torch": "2.13.0+cpu", "python": "3.11.7"})
    report = reporting.load_report(reporting.save_report("demo", "Demo", [], command="x", directory=tmp_path,
                                                         machine=reporting.raw_machine(raw, threads=4)))
    assert report.machine == {"cpus": 16, "torch": "2.11.0+cu130", "python": "3.12.3", "threads": 4}
    assert reporting.raw_machine({"machine": "x86_64, 2 CPUs (shared)"}, threads=1) == {"threads": 1}


def test_rows_must_match_columns():
    with pytest.raises(ValueError, match="row 0 has 1 entries but the table has 2 columns"):
        reporting.Table(["a", "b"], [[1]])


def test_non_report_json_is_refused(tmp_path):
    (tmp_path / "x.json").write_text('{"name": "x"}')
    with pytest.raises(ValueError, match="missing"):
        make_results.render(tmp_path)


def test_known_reports_come_first(tmp_path):
    for name in ("zeta", "bench_solver"):
        reporting.save_report(name, name.upper(), [reporting.Table(["a"], [[1]])], command="c", directory=tmp_path)
    text = make_results.render(tmp_path)
    assert text.index("## BENCH_SOLVER") < text.index("## ZETA")


def test_committed_results_page_is_up_to_date():
    """docs/results.md must be what the generator makes from the committed reports."""
    assert make_results.main(["--check"]) == 0
