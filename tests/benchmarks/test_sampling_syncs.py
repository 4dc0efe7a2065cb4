"""benchmarks/sampling_syncs.py: its CPU self-check runs every path of the script on a shipped config and writes
a report that is rebuilt from its raw file; the per-call contender reads back per call, the default does not."""

import json
from pathlib import Path

import pytest
import torch
from benchmark_scripts import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("sampling_syncs")


def test_cpu_run_reports_every_contender_and_is_rebuilt_from_raw(script, tmp_path):
    path = script.main(["--device", "cpu", "--repeats", "1", "--batches", "2", "--configs", "digits_ddpm",
                        "--results-dir", str(tmp_path)])
    report = json.loads(Path(path).read_text())
    (table,) = report["tables"]
    (row,) = [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]
    assert row["sampler"] == "dpm_2_ancestral, 18 steps" and row["NFE"] == 35
    assert all(row[f"{name} ms"] > 0 for name in script.CONTENDERS)
    assert "measure nothing" in report["notes"][0]
    raw = json.loads((tmp_path / "raw" / "sampling_syncs.json").read_text())
    rebuilt = json.loads(Path(script.save_sampling_syncs_report(raw, tmp_path / "rebuilt")).read_text())
    assert rebuilt["tables"] == report["tables"]


def test_checks_per_call_reads_per_call(script, monkeypatch):
    """Taking the GPU's path on the CPU: the default run reads twice, the per-call contender once per σ check
    and once per output, and leaves the default in place afterwards."""
    from pynodeta import _host_copies
    from pynodeta.ode.backends.graphed_step import DeviceValueReads

    monkeypatch.setattr(_host_copies, "reads_wait_for", lambda tensor: True)
    run = script.Run("digits_ddpm", 2, torch.device("cpu"))

    class Counted(DeviceValueReads):
        count = 0

        def read(self, func):
            self.count += 1

    def reads(sample) -> int:
        counted = Counted([run.x, *run.denoiser.parameters()])
        tracking = run.denoiser

        def denoiser(x, sigma, **kwargs):
            counted.track(sigma)
            return tracking(x, sigma, **kwargs)

        run.denoiser = denoiser
        try:
            with counted:
                sample()
        finally:
            run.denoiser = tracking
        return counted.count

    def per_call():
        with script.checks_per_call():
            run.sample()

    assert reads(run.sample) == 2
    assert reads(per_call) == 1 + 3 * 35  # the noise's check, then σ's min and max and the output per call
    assert reads(run.sample) == 2
    from pynodeta import _random

    assert _random.to_device is _host_copies.to_device  # the blocking copy of earlier versions is undone too
