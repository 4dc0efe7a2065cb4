"""benchmarks/graphed_step.py: its CPU self-check (the stand-in for a CUDA graph) runs every path of the script
and writes a report that is rebuilt from its raw file; the payback split computes what it says."""

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("graphed_step")


def test_stand_in_run_reports_the_eager_nfe_and_is_rebuilt_from_raw(script, tmp_path, monkeypatch):
    from pynodeta.ode.backends import graphed_step

    monkeypatch.setattr(graphed_step, "graph_capture", graphed_step.graph_capture)  # main() replaces it
    path = script.main(["--device", "cpu", "--stand-in", "--repeats", "1", "--workloads", "MLP forward",
                        "--results-dir", str(tmp_path)])
    report = json.loads(Path(path).read_text())
    (table,) = report["tables"]
    (row,) = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
    assert row["NFE (eager / graphed)"] == "74 / 74"
    assert all(row[f"{name} ms"] > 0 for name in (*script.CONTENDERS, "func alone"))
    assert "stand-in" in report["notes"][0]
    raw = json.loads((tmp_path / "raw" / "graphed_step.json").read_text())
    rebuilt = json.loads(Path(script.save_graphed_step_report(raw, tmp_path / "rebuilt")).read_text())
    assert rebuilt["tables"] == report["tables"]


def test_payback_splits_each_solve_into_a_cost_per_step_and_a_fixed_cost(script):
    # eager: 1 ms per step + 2 ms per solve; graphed: 0.25 ms per step + 5 ms per solve (3 ms of capture)
    steps = {"pynodeta": (40, 10), "pynodeta+cuda_graph": (40, 10)}
    median = {"pynodeta": 0.042, "pynodeta, quarter span": 0.012,
              "pynodeta+cuda_graph": 0.015, "pynodeta+cuda_graph, quarter span": 0.0075}
    saving, capture, pay_back = script.payback(dict(steps=steps, median_s=median))
    assert saving == pytest.approx(0.75) and capture == pytest.approx(3.0) and pay_back == "4"
