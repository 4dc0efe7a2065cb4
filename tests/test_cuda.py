"""The CUDA paths: the same results on a GPU as on the CPU, and every shipped digits job end to end on a GPU.

Skipped where no CUDA device exists (CI has none); run them on a GPU machine with
``python3 -m pytest -q tests/test_cuda.py``.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

from pynodeta import Adjoint, IController, SolverSettings, odeint_event, record_stats, solve
from pynodeta.diffusion import (
    DDPMSchedule,
    DenoiserFromEpsilon,
    karras_sigmas,
    log_likelihood,
    sample_ddpm,
    sample_heun,
)
from pynodeta.ema import PowerFunctionEMA, posthoc_reconstruct

from .diffusion.gaussian_data import standard_case

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


class Field(nn.Module):
    """A small nonlinear vector field with parameters: dy/dt = W2 tanh(W1 y + b t)."""

    def __init__(self, dim: int = 6):
        super().__init__()
        torch.manual_seed(0)
        self.inner, self.outer = nn.Linear(dim, 16), nn.Linear(16, dim)
        self.time = nn.Parameter(torch.randn(16))

    def forward(self, t, y):
        return self.outer(torch.tanh(self.inner(y) + self.time * t))


def _solve_on(device, adjoint: bool):
    func = Field().double().to(device)
    y0 = torch.linspace(-1, 1, 24, dtype=torch.float64, device=device).reshape(4, 6).requires_grad_(True)
    t = torch.linspace(0, 2, 5, dtype=torch.float64, device=device)
    settings = SolverSettings(method="dopri5", controller=IController(rtol=1e-7, atol=1e-9),
                              adjoint=Adjoint() if adjoint else False)
    with record_stats() as log:
        sol = solve(func, y0, t, **settings)
        sol.ys.square().sum().backward()
    grads = [y0.grad] + [p.grad for p in func.parameters()]
    return sol.ys.detach().cpu(), [g.cpu() for g in grads], sum(s.nfe for s in log)


@pytest.mark.parametrize("adjoint", [False, True])
def test_dopri5_and_its_gradients_agree_on_gpu_and_cpu(adjoint):
    ys_cpu, grads_cpu, nfe_cpu = _solve_on(torch.device("cpu"), adjoint)
    ys_gpu, grads_gpu, nfe_gpu = _solve_on(CUDA, adjoint)
    assert nfe_gpu == nfe_cpu  # float64: the same accept/reject decisions
    torch.testing.assert_close(ys_gpu, ys_cpu, rtol=1e-9, atol=1e-11)
    for g_gpu, g_cpu in zip(grads_gpu, grads_cpu):
        torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-7, atol=1e-9)


def test_event_time_and_its_gradient_on_gpu():
    """Free fall y'' = −g from height h: the ground is hit at √(2h/g), and d t_event / d h = 1/√(2 g h)."""
    g, h = 9.81, torch.tensor(2.0, dtype=torch.float64, device=CUDA, requires_grad=True)
    y0 = torch.stack([h, torch.zeros((), dtype=torch.float64, device=CUDA)])
    t0 = torch.tensor(0.0, dtype=torch.float64, device=CUDA)
    event_t, _ = odeint_event(lambda t, y: torch.stack([y[1], torch.full_like(y[1], -g)]), y0, t0,
                              event_fn=lambda t, y: y[0], rtol=1e-9, atol=1e-11)
    assert event_t.device.type == "cuda"
    assert abs(float(event_t) - math.sqrt(2 * 2.0 / g)) < 1e-7
    event_t.backward()
    assert abs(float(h.grad) - 1 / math.sqrt(2 * g * 2.0)) < 1e-6


def _gaussian_eps(schedule: DDPMSchedule, mean: torch.Tensor, std: float):
    """The exact ε-predictor of N(mean, std² I) data (see diffusion/gaussian_data.py), on mean's device."""
    alphas = schedule.alphas_cumprod.to(mean.device)

    def eps(t, x):
        alpha = alphas[t].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - alpha).sqrt() * (x - alpha.sqrt() * mean) / (alpha * std**2 + 1 - alpha)

    return eps


def test_stochastic_samplers_take_a_cpu_generator_for_gpu_tensors():
    """The same seed gives the same images on both devices: the noise is drawn on the generator's device."""
    data, schedule = standard_case(), DDPMSchedule(100)
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    images = {device: sample_ddpm(_gaussian_eps(schedule, data.mean.to(device), data.std), x_T.to(device),
                                  schedule, generator=torch.Generator().manual_seed(1)).cpu()
              for device in ("cpu", "cuda")}
    torch.testing.assert_close(images["cuda"], images["cpu"], rtol=1e-9, atol=1e-9)
    sigmas = karras_sigmas(10, dtype=torch.float64, device=CUDA)
    gpu_data = type(data)(data.mean.to(CUDA), data.std)
    x = torch.randn(8, 2, dtype=torch.float64, device=CUDA) * sigmas[0]
    churned = sample_heun(gpu_data.denoiser, x, sigmas, s_churn=5.0, generator=torch.Generator().manual_seed(2))
    assert churned.device.type == "cuda" and torch.isfinite(churned).all()


def test_log_likelihood_on_gpu_matches_the_cpu():
    data = standard_case()
    x = data.noisy(8, 0.0, torch.Generator().manual_seed(0))
    cpu = log_likelihood(data.denoiser, x, divergence="exact")
    gpu_data = type(data)(data.mean.to(CUDA), data.std)
    gpu = log_likelihood(gpu_data.denoiser, x.to(CUDA), divergence="exact")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)
    hutchinson = log_likelihood(gpu_data.denoiser, x.to(CUDA), generator=torch.Generator().manual_seed(0))
    assert hutchinson.device.type == "cuda" and torch.isfinite(hutchinson).all()
    schedule = DDPMSchedule(1000)
    from_eps = DenoiserFromEpsilon(_gaussian_eps(schedule, gpu_data.mean, data.std), schedule)
    sigma = torch.full((8,), 1.0, dtype=torch.float64, device=CUDA)
    torch.testing.assert_close(from_eps(x.to(CUDA), sigma), gpu_data.denoiser(x.to(CUDA), sigma), rtol=1e-2, atol=1e-2)


def test_power_function_ema_snapshots_of_a_gpu_model_reconstruct_on_the_cpu(tmp_path):
    model = nn.Linear(4, 3).to(CUDA)
    ema = PowerFunctionEMA(model, sigma_rels=(0.05, 0.10))
    for step in range(1, 41):
        with torch.no_grad():
            model.weight.add_(0.01 * step)
        ema.update(step)
        if step % 10 == 0:
            ema.save_snapshot(tmp_path, step)
    assert next(ema.averaged(0.10).parameters()).device.type == "cuda"
    state = posthoc_reconstruct(tmp_path, 0.10)
    torch.testing.assert_close(state["weight"].cpu(), ema.averaged(0.10).weight.detach().cpu(), rtol=5e-3, atol=5e-3)


def _fit_on_gpu(tmp_path, capsys, config: str, extra: list[str]) -> str:
    from pynodeta.cli import main

    args = ["fit", "--config", config, "--trainer.accelerator", "gpu", "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "0.2", "--trainer.limit_val_batches", "0.5",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *extra]
    assert main(args) == 0
    return capsys.readouterr().out


def test_main_job_on_gpu(tmp_path, capsys):
    out = _fit_on_gpu(tmp_path, capsys, "digits_tabn", ["--trainer.limit_test_batches", "0.5"])
    assert re.search(r"test[/_ ]acc", out), out[-2000:]


@pytest.mark.parametrize("config", ["digits_ddpm", "digits_edm", "digits_edm2"])
def test_diffusion_jobs_on_gpu_then_sample_and_evaluate(tmp_path, capsys, config):
    from pynodeta.cli import main
    from pynodeta.train.diffusion_sampling import OWN_STEP_SAMPLERS

    out = _fit_on_gpu(tmp_path, capsys, config, ["--model.init_args.evaluation.num_samples", "64",
                                                 "--model.init_args.evaluation.nll_num_images", "4"])
    assert "pynodeta summary: FD" in out, out[-2000:]
    summary = json.loads(next((tmp_path / "runs").rglob("summary.json")).read_text())
    assert math.isfinite(summary["fd"]) and math.isfinite(summary["bpd"])
    checkpoint = str(next((tmp_path / "runs").rglob("last.ckpt")))
    samplers = ("ddpm", "heun", "ode") if config == "digits_ddpm" else ("heun", "dpmpp_2m", "ode")
    for sampler in samplers:
        steps = [] if sampler in OWN_STEP_SAMPLERS else ["--steps", "8"]  # ddpm and ode refuse a step count
        assert main(["sample", "--checkpoint", checkpoint, "--sampler", sampler, *steps, "--num", "8",
                     "--device", "cuda", "--out", str(tmp_path / f"{sampler}.png")]) == 0
    assert main(["evaluate", "--checkpoint", checkpoint, "--device", "cuda", "--num", "32", "--steps", "4",
                 "--nll-images", "2", "--out", str(tmp_path / "eval.png")]) == 0


def _batched_on(device, adjoint: bool):
    """Per-sample step sizes: van der Pol samples of different stiffness, each with its own times."""
    mus = torch.tensor([0.5, 2.0, 8.0, 1.0], dtype=torch.float64, device=device, requires_grad=True)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.5, -1.0], [-1.0, 0.3]], dtype=torch.float64, device=device)
    t = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.5, 3.0], [1.0, 1.5, 2.0], [2.0, 1.0, 0.0]], dtype=torch.float64,
                     device=device)

    def van_der_pol(time, y):
        return torch.stack([y[:, 1], mus * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], dim=1)

    with record_stats() as log:
        sol = solve(van_der_pol, y0, t, controller=IController(rtol=1e-8, atol=1e-10), batched=True,
                    adjoint=Adjoint(params=(mus,)) if adjoint else False)
        sol.ys.square().sum().backward()
    return sol.ys.detach().cpu(), mus.grad.cpu(), log[-1].nfe_per_sample.cpu()


@pytest.mark.parametrize("adjoint", [False, True])
def test_per_sample_steps_agree_on_gpu_and_cpu(adjoint):
    ys_cpu, grad_cpu, nfe_cpu = _batched_on(torch.device("cpu"), adjoint)
    ys_gpu, grad_gpu, nfe_gpu = _batched_on(CUDA, adjoint)
    assert torch.equal(nfe_gpu, nfe_cpu)
    torch.testing.assert_close(ys_gpu, ys_cpu, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(grad_gpu, grad_cpu, rtol=1e-6, atol=1e-8)


def test_gpu_smoke_benchmark_measures_time_and_memory_on_gpu(tmp_path):
    """benchmarks/gpu_smoke.py's CUDA path (synchronised timings, peak memory per contender) at tiny sizes."""
    import importlib.util
    import os
    import sys
    from pathlib import Path

    pytest.importorskip("diffusers")
    benchmarks = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    spec = importlib.util.spec_from_file_location("_bench_gpu_smoke_cuda", benchmarks / "gpu_smoke.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    nvlabs = os.environ.get("PYNODETA_NVLABS_EDM2")
    path = script.main(["--device", "cuda", "--tiny", "--results-dir", str(tmp_path)]
                       + (["--nvlabs-edm2", nvlabs] if nvlabs else []))
    report = json.loads(Path(path).read_text())
    assert report["name"] == "gpu_smoke_cuda"
    table = report["tables"][0]
    rows = [dict(zip(table["columns"], row)) for row in table["rows"]]
    assert len(rows) == (10 if nvlabs else 8)
    for row in rows:
        assert row["peak MiB"] > 0 and row["ms per call (median)"] > 0
        if row["workload"].startswith("CIFAR") or nvlabs:
            assert math.isfinite(row["time ÷ reference"]) and math.isfinite(row["peak memory ÷ reference"])
    raw = json.loads((tmp_path / "raw" / "gpu_smoke_cuda.json").read_text())
    assert raw["device"] == "cuda" and raw["backends"] == {"cudnn_benchmark": True, "tf32": False}


class _PerSampleTimeField(Field):
    """Field with t of shape (batch,) (per-sample solves) or 0-d."""

    def forward(self, t, y):
        return self.outer(torch.tanh(self.inner(y) + self.time * t.reshape(-1, 1)))


@pytest.mark.parametrize("batched", [False, True])
def test_compiled_step_on_gpu_takes_the_eager_steps(batched):
    """backend_options={'compile': True} on CUDA (inductor's GPU kernels): the eager step's NFE and solution."""
    func = _PerSampleTimeField().double().to(CUDA)
    y0 = torch.linspace(-1, 1, 24, dtype=torch.float64, device=CUDA).reshape(4, 6)
    t = torch.linspace(0, 2, 5, dtype=torch.float64, device=CUDA)
    settings = dict(controller=IController(rtol=1e-7, atol=1e-9), batched=batched)
    with torch.no_grad():
        eager = solve(func, y0, t, **settings)
        compiled = solve(func, y0, t, backend_options={"compile": True}, **settings)
    assert compiled.stats.nfe == eager.stats.nfe
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-9, atol=1e-11)


def _count_captures(monkeypatch) -> list:
    """The CudaGraphCapture objects made by the solves that follow, to see that a graph was replayed."""
    from pynodeta.ode.backends import graphed_step

    made, original = [], graphed_step.graph_capture
    monkeypatch.setattr(graphed_step, "graph_capture", lambda device: made.append(original(device)) or made[-1])
    return made


@pytest.mark.parametrize("method", ["dopri5", "adaptive_heun"])
def test_cuda_graph_step_takes_the_eager_steps(monkeypatch, method):
    """backend_options={'cuda_graph': True}: a captured and replayed trial step gives the eager NFE, steps and
    solution, and the adjoint's forward solve replayed gives the eager gradients."""
    captures = _count_captures(monkeypatch)
    func = Field().double().to(CUDA)
    y0 = torch.linspace(-1, 1, 24, dtype=torch.float64, device=CUDA).reshape(4, 6)
    t = torch.linspace(0, 2, 5, dtype=torch.float64, device=CUDA)
    settings = dict(method=method, controller=IController(rtol=1e-7, atol=1e-9))
    with torch.no_grad():
        eager = solve(func, y0, t, **settings)
        graphed = solve(func, y0, t, backend_options={"cuda_graph": True}, **settings)
    assert len(captures) == 1 and graphed.stats.n_steps > 3
    assert graphed.stats.nfe == eager.stats.nfe and graphed.stats.n_rejected == eager.stats.n_rejected
    torch.testing.assert_close(graphed.ys, eager.ys, rtol=1e-9, atol=1e-11)
    grads = []
    for options in (None, {"cuda_graph": True}):
        func.zero_grad()
        solve(func, y0, t, adjoint=Adjoint(), backend_options=options, **settings).ys.square().sum().backward()
        grads.append([p.grad.clone() for p in func.parameters()])
    for eager_grad, graphed_grad in zip(*grads, strict=True):
        torch.testing.assert_close(graphed_grad, eager_grad, rtol=1e-9, atol=1e-11)


def test_cuda_graph_step_of_an_eval_tabn_field_and_of_a_probability_flow(monkeypatch):
    """The library's own right-hand sides capture: an eval-mode TA-BN field (its grid cell taken on the device
    while recording) and the probability-flow ODE of an EDM2 denoiser (its σ checks standing aside)."""
    from pynodeta.diffusion import EDM2Precond, probability_flow
    from pynodeta.models.diffusion import EDM2UNet
    from pynodeta.nn import ConcatLinear, TABatchNorm1d, TimeSequential

    captures = _count_captures(monkeypatch)
    torch.manual_seed(0)
    field = TimeSequential(ConcatLinear(2, 8), TABatchNorm1d(8, M=10), nn.Tanh(), ConcatLinear(8, 2))
    field = field.double().to(CUDA).eval()
    y0 = torch.randn(16, 2, dtype=torch.float64, device=CUDA)
    span = torch.tensor([0.0, 1.0], dtype=torch.float64, device=CUDA)
    denoiser = EDM2Precond(EDM2UNet(8, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                                    attn_resolutions=(4,)), logvar_channels=8).double().to(CUDA).eval()
    x = 10 * torch.randn(2, 1, 8, 8, dtype=torch.float64, device=CUDA)
    graph = {"cuda_graph": True}
    with torch.no_grad():
        tabn = [solve(field, y0, span, controller=IController(rtol=1e-6, atol=1e-8), backend_options=options)
                for options in (None, graph)]
        flow = [probability_flow(denoiser, x, 10.0, 0.5, rtol=1e-5, atol=1e-5, backend_options=options)
                for options in (None, graph)]
    assert len(captures) == 2
    torch.testing.assert_close(tabn[1].ys, tabn[0].ys, rtol=1e-5, atol=1e-7)  # kinks at grid points: tolerance
    assert flow[1].stats.nfe == flow[0].stats.nfe
    torch.testing.assert_close(flow[1].ys, flow[0].ys, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["edm2", "ddpm", "ddpm_eps"])
def test_a_sampling_run_synchronises_at_its_start_and_end_only(kind):
    """No synchronisation per step: σ's checks read bounds the host knows, the outputs' finiteness is read once
    when the run ends, fresh noise from a CPU generator and a schedule's table entries reach the GPU through
    page-locked memory. The same count for 4 steps and for 12 (CUDA's sync debug mode counts them)."""
    import warnings

    from pynodeta.diffusion import SAMPLERS
    from pynodeta.diffusion.edm2 import EDM2Precond
    from pynodeta.models.diffusion import DDPMUNet, EDM2UNet

    torch.manual_seed(0)
    network = DDPMUNet(image_size=8, channels=16).to(CUDA).eval()
    if kind == "edm2":  # deterministic
        denoiser = EDM2Precond(EDM2UNet(8, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                                        attn_resolutions=(4,)), logvar_channels=8).to(CUDA).eval()

        def run(steps, x, generator):
            return SAMPLERS["dpmpp_2m"](denoiser, x * 80, karras_sigmas(steps), disable=True)
    elif kind == "ddpm":  # ancestral: fresh noise every step
        denoiser = DenoiserFromEpsilon(network, DDPMSchedule(1000))

        def run(steps, x, generator):
            sigmas = karras_sigmas(steps, denoiser.sigma_min, denoiser.sigma_max)
            return SAMPLERS["dpm_2_ancestral"](denoiser, x * sigmas[0], sigmas, generator=generator, disable=True)
    else:  # the ε-network's own ancestral sampler, through the schedule's tables

        def run(steps, x, generator):
            return sample_ddpm(network, x, DDPMSchedule(steps), generator=generator, disable=True)

    def synchronisations(steps: int) -> int:
        x = torch.randn(16, 1, 8, 8, device=CUDA)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run(steps, x, torch.Generator().manual_seed(0))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(warning.message) for warning in caught)

    synchronisations(4)  # warm-up: the first calls on a device may synchronise while setting up
    short, long = synchronisations(4), synchronisations(12)
    assert short == long <= 3, f"{short} synchronisations in 4 steps, {long} in 12"


def test_cuda_graph_step_that_cannot_be_captured_names_the_fix():
    """A func that reads a value to the host cannot be captured: the error says so, and the device stays
    usable for an eager solve afterwards. (Last in the file: a failed capture is the riskiest CUDA call.)"""

    def reads_to_host(t, y):
        return -y * float(t)

    y0 = torch.ones(4, 6, device=CUDA)
    t = torch.linspace(0, 2, 5, device=CUDA)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"cuda_graph.*could not be captured.*drop the option"):
            solve(reads_to_host, y0, t, backend_options={"cuda_graph": True})
        assert torch.isfinite(solve(reads_to_host, y0, t).ys).all()
