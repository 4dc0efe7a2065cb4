"""benchmarks/gpu_smoke.py: its tiny CPU run writes a report with every workload and finite ratios, the report
is rebuilt from the raw file, and its ratios and memory accounting compute what they say.

NVlabs/edm2's side runs only where PYNODETA_NVLABS_EDM2 names a checkout of it (never part of this repository).
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from benchmark_scripts import load_script


def test_tiny_cpu_run_reports_every_workload_with_finite_ratios(tmp_path):
    pytest.importorskip("diffusers")
    script = load_script("gpu_smoke")
    nvlabs = os.environ.get("PYNODETA_NVLABS_EDM2")
    args = ["--device", "cpu", "--tiny", "--warmup", "0", "--rounds", "1", "--results-dir", str(tmp_path)]
    path = script.main(args + (["--nvlabs-edm2", nvlabs] if nvlabs else []))
    report = json.loads(Path(path).read_text())
    table = report["tables"][0]
    rows = [dict(zip(table["columns"], row)) for row in table["rows"]]
    assert {r["workload"] for r in rows} == {"EDM2-XS img512 training step", "EDM2-XS Heun-2 sampling",
                                             "CIFAR-10 DDPM training step, fp32", "CIFAR-10 DDPM training step, bf16",
                                             "CIFAR-10 DDPM DDIM-2 sampling"}
    for row in rows:
        assert row["ms per call (median)"] > 0 and math.isfinite(row["images/s"])
        assert row["peak MiB"] == "n/a"  # max_memory_allocated is CUDA's
        if row["contender"].startswith(("diffusers", "NVlabs")):
            assert row["time ÷ reference"] == 1.0
        elif row["workload"].startswith("CIFAR") or nvlabs:
            assert math.isfinite(row["time ÷ reference"]) and row["time ÷ reference"] > 0
        else:
            assert row["time ÷ reference"] == "n/a"
    # the diffusers model is google/ddpm-cifar10-32's configuration: the same network size as cifar10_ddpm's
    cifar = [r["parameters"] for r in rows if r["workload"] == "CIFAR-10 DDPM training step, fp32"]
    assert len(cifar) == 2 and cifar[0] == cifar[1]
    assert any("--tiny" in note for note in report["notes"])
    assert nvlabs or any("--nvlabs-edm2" in note for note in report["notes"])
    # the builder makes the same report from the raw file (what --from-raw does)
    raw = json.loads((tmp_path / "raw" / "gpu_smoke.json").read_text())
    rebuilt = json.loads(Path(script.save_gpu_smoke_report(raw, tmp_path / "rebuilt")).read_text())
    assert rebuilt["tables"] == report["tables"] and rebuilt["command"] == report["command"]


def test_ratios_are_medians_of_per_round_ratios():
    script = load_script("gpu_smoke")
    record = {"contenders": [{"name": "ours", "anchor": False, "seconds": [2.0, 4.0, 3.0], "peak_bytes": None},
                             {"name": "theirs", "anchor": True, "seconds": [1.0, 2.0, 3.0], "peak_bytes": None}]}
    # per round 2, 2, 1 -> 2 (the ratio of the medians would be 3 / 2): a round's load hits both sides
    assert script.ratios(record) == {"ours": {"time": 2.0, "memory": None}, "theirs": {"time": 1.0, "memory": None}}


def test_resident_memory_is_weights_buffers_and_adam_state():
    script = load_script("gpu_smoke")
    layer = torch.nn.BatchNorm1d(3)  # 2 parameters of 3 and 3 buffers (mean, var, count)
    optimizer = torch.optim.Adam(layer.parameters())
    x = torch.randn(4, 3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        layer(x).square().sum().backward()
        optimizer.step()

    contender = script.c.Contender("bn", "fp32", step, [layer], optimizer)
    weights_and_buffers = 2 * 3 * 4 + 2 * 3 * 4 + 8
    assert contender.resident_bytes() == weights_and_buffers  # no state before the first step
    step()
    # Adam: exp_avg and exp_avg_sq like each parameter, and a float32 step count per parameter
    assert contender.resident_bytes() == weights_and_buffers + 2 * (2 * 3 * 4) + 2 * 4
    contender.release()
    assert all(p.grad is None for p in layer.parameters())


def test_a_folder_that_is_not_nvlabs_edm2_is_refused(tmp_path):
    script = load_script("gpu_smoke")
    with pytest.raises(ValueError, match="no training/networks_edm2.py.*github.com/NVlabs/edm2"):
        script.c.import_nvlabs(tmp_path)


def test_edm2_backend_settings_hold_only_while_the_workloads_run():
    script = load_script("gpu_smoke")
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    # the flags are plain attributes, settable without a GPU: the CUDA branch is checked here
    with script.edm2_backends(torch.device("cuda")) as settings:
        assert settings == {"cudnn_benchmark": True, "tf32": False}
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32) == before
    with script.edm2_backends(torch.device("cpu")) as settings:
        assert settings == {} and torch.backends.cudnn.benchmark == before[0]
