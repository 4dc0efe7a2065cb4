"""Every committed report is what its script's own table code makes from the committed raw measurements.

This is what keeps docs/results.md honest: a number there can only change by rerunning a benchmark
(or its ``--from-raw`` path), never by editing a report.
"""

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_script

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
RESULTS, RAW = BENCHMARKS / "results", BENCHMARKS / "results" / "raw"

# raw file stem -> (script, the script's function that turns the raw record into its report)
BUILDERS = {
    "bench_solver": ("bench_solver", "save_solver_report"),
    "bench_solver_cuda": ("bench_solver", "save_solver_report"),
    "bench_batched": ("bench_batched", "save_batched_report"),
    "bench_batched_cuda": ("bench_batched", "save_batched_report"),
    "compiled_step": ("compiled_step", "save_compiled_step_report"),
    "bench_diffusion_sampler": ("bench_diffusion_sampler", "save_sampler_report"),
    "bench_diffusion_sampler_width8": ("bench_diffusion_sampler", "save_sampler_report"),
    "diffusion_vanishing": ("diffusion_vanishing", "save_vanishing_report"),
    "same_recipe_networks": ("same_recipe_networks", "save_comparison_report"),
    "digits_diffusion_fits": ("digits_diffusion_fits", "save_fits_report"),
    "digits_features": ("train_digits_features", "save_features_report"),
    "digits_guidance": ("digits_guidance", "save_guidance_report"),
    "seed004_convergence": ("convergence_report", "save_convergence_report"),
    "seed004_digits_overhead": ("seed004_digits", "save_overhead_report"),
    "edm2_dynamics": ("edm2_digits", "save_edm2_report"),
    "edm2_phema": ("edm2_digits", "save_edm2_report"),
    "edm2_cost": ("edm2_digits", "save_edm2_report"),
    "edm2_step_cost": ("edm2_step_cost", "save_cost_report"),
    "edm2_step_cost_before": ("edm2_step_cost", "save_cost_report"),
    "upsample_conv_cost": ("upsample_conv_cost", "save_cost_report"),
    "ddpm_vlb_cost": ("ddpm_vlb_cost", "save_vlb_cost_report"),
    "ddp_scaling": ("ddp_scaling", "save_scaling_report"),
    "mixed_precision_step": ("mixed_precision_step", "save_precision_report"),
    "diffusion_compile": ("diffusion_compile", "save_compile_report"),
    "quality_per_nfe": ("quality_per_nfe", "save_quality_report"),
    "sampling_grid": ("sampling_grid", "save_grid_report"),
    "diffusers_sweep": ("diffusion_vs_diffusers", "save_sweep_report"),
    "diffusers_race": ("diffusion_vs_diffusers", "save_race_report"),
    "threads_under_load": ("threads_under_load", "save_threads_report"),
}


def test_every_raw_file_has_a_builder():
    assert sorted(p.stem for p in RAW.glob("*.json")) == sorted(BUILDERS)


@pytest.mark.parametrize("stem", sorted(BUILDERS))
def test_report_is_rebuilt_from_its_raw_file(stem, tmp_path, monkeypatch):
    script, builder = BUILDERS[stem]
    module = load_script(script)
    saved = {}

    def capture(name, title, tables, **kwargs):
        saved.update(name=name, title=title, tables=json.loads(json.dumps([t.__dict__ for t in tables])), **kwargs)
        return tmp_path / f"{name}.json"

    monkeypatch.setattr(module, "save_report", capture)
    if hasattr(module, "RESULTS_DIR"):  # plots go to a scratch folder, not over the committed ones
        monkeypatch.setattr(module, "RESULTS_DIR", tmp_path)
    getattr(module, builder)(json.loads((RAW / f"{stem}.json").read_text()))
    committed = json.loads((RESULTS / f"{saved['name']}.json").read_text())
    assert saved["name"] == stem
    assert (saved["title"], saved["command"]) == (committed["title"], committed["command"])
    assert json.loads(json.dumps(saved["tables"], default=float)) == committed["tables"]
    assert list(saved.get("plots", [])) == committed["plots"]
