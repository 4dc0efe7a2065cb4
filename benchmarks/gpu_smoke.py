"""GPU smoke benchmark: pynodeta's shipped EDM2-XS and CIFAR-10 DDPM presets against NVlabs/edm2 and diffusers,
training step time, peak memory and sampling images/s, as ratios to the reference implementation.

    python3 benchmarks/gpu_smoke.py --device cuda --nvlabs-edm2 /path/to/edm2

Sized to finish well within six minutes on an H100 (the total is printed and kept as ``seconds_total``).
Setting up the reference code (never part of this repository):

    git clone https://github.com/NVlabs/edm2 /path/to/edm2
    pip install click Pillow psutil requests scipy tqdm    # what its modules import (README "Requirements")
    pip install diffusers                                  # the CIFAR-10 reference; built from config, no download

Without ``--nvlabs-edm2`` the EDM2 rows have no reference (said in the output); without diffusers the CIFAR-10
rows are skipped. Only ``train_edm2.py`` (its ``config_presets``), ``training/networks_edm2.py``,
``training/training_loop.py`` (``EDM2Loss``, ``learning_rate_schedule``) and ``generate_images.py``
(``edm_sampler``) are imported from the checkout, with what they import themselves.

Workloads, each timed over ``--rounds`` rounds with the contenders alternated (the order flips every round)
after ``--warmup`` untimed calls (one batch for a sampler); a round times ``--steps`` training steps or one
sampling batch, between device synchronisations. Peak memory is ``torch.cuda.max_memory_allocated`` over the
contender's round (reset before it) above what was allocated when it began, plus the contender's own weights,
buffers and optimiser state.

1. EDM2-XS, ImageNet-512 latents (4 × 64 × 64), class-conditional (1000 classes), batch 16: pynodeta's
   ``edm2_img512_xs`` network, EDM2Objective and EDM2Adam under bf16 autocast, against train_edm2.py's
   ``edm2-img512-xs`` Precond, EDM2Loss and Adam + learning_rate_schedule with their fp16 network (``--fp16``
   defaults to True in train_edm2.py; ``--ls`` loss scaling 1; gradients through nan_to_num).
2. CIFAR-10 DDPM, batch 128: pynodeta's ``cifar10_ddpm`` DDPMUNet, DDPMObjective and DiffusionAdam (lr 2e-4,
   clip 1) against diffusers' UNet2DModel with google/ddpm-cifar10-32's config and the same optimiser, in
   float32 and under bf16 autocast.
3. Sampling: Heun-32 on EDM2-XS (batch 64, bf16; NVlabs' edm_sampler with its fp16 network), DDIM-50 on the
   CIFAR-10 DDPM (batch 128, float32; diffusers' DDIMPipeline loop).

On CUDA both sides run with train_edm2's backend settings (cudnn.benchmark on, TF32 off); no DDP wrapper and no
EMA update on either side. ``--device cpu --tiny`` runs every path with tiny widths in seconds: a self-check of
the script, not a measurement. Saves benchmarks/results/gpu_smoke_cuda.json and the raw record under
results/raw/ (a ``--tiny`` run writes into a temporary folder unless ``--results-dir`` is given);
``--from-raw FILE`` rebuilds the report.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import operator
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_smoke_contenders as c  # noqa: E402

from reporting import (  # noqa: E402
    RESULTS_DIR,
    Table,
    add_from_raw,
    device_record,
    device_report,
    load_raw,
    raw_machine,
    rebuilt_from_raw,
    save_raw,
    save_report,
    synchronize,
)

NAME = "gpu_smoke"
TITLE = "pynodeta against NVlabs/edm2 and diffusers on one GPU: training steps, memory and sampling"


def workloads(sizes: c.Sizes, device: torch.device, nvlabs_checkout: Path | None, skipped: list[str]):
    """The comparisons, built one section at a time so that a section's models are freed before the next."""
    generator = torch.Generator().manual_seed(0)
    nvlabs = c.import_nvlabs(nvlabs_checkout) if nvlabs_checkout is not None else None
    if nvlabs is None:
        skipped.append("NVlabs/edm2: no --nvlabs-edm2 checkout given, the EDM2 rows have no reference")
    edm2_overrides = {"label_dim": sizes.edm2_classes, "img_resolution": sizes.edm2_resolution}
    for key, value in (("model_channels", sizes.edm2_channels), ("num_blocks", sizes.edm2_blocks)):
        if value is not None:
            edm2_overrides[key] = value
    edm2 = c.build_pynodeta(c.EDM2_CONFIG, edm2_overrides)
    shape = (4, sizes.edm2_resolution, sizes.edm2_resolution)
    x0 = (0.5 * torch.randn(sizes.edm2_batch, *shape, generator=generator)).to(device)  # σ_data-scaled latents
    labels = torch.randint(0, sizes.edm2_classes, (sizes.edm2_batch,), generator=generator).to(device)
    one_hot = F.one_hot(labels, sizes.edm2_classes).float()
    net = c.nvlabs_network(nvlabs, sizes, device) if nvlabs is not None else None

    training = c.Workload("EDM2-XS img512 training step", "training step", sizes.edm2_batch,
                          [c.pynodeta_training("pynodeta edm2_img512_xs", edm2, x0, labels, "bf16", device)],
                          sizes.steps)
    if net is not None:
        training.contenders.append(c.nvlabs_training(nvlabs, net, x0, one_hot, device))
    yield training

    batch = sizes.edm2_sample_batch
    sample_labels = torch.randint(0, sizes.edm2_classes, (batch,), generator=generator)
    heun = c.Workload(f"EDM2-XS Heun-{sizes.heun_steps} sampling", "sampling batch", batch,
                      [c.pynodeta_sampling("pynodeta heun (generate_batches)", edm2, "heun", sizes.heun_steps, batch,
                                           sample_labels, "bf16", device)])
    if net is not None:
        heun.contenders.append(c.nvlabs_sampling(nvlabs, net, sizes.heun_steps, batch,
                                                 F.one_hot(sample_labels, sizes.edm2_classes).float().to(device),
                                                 device))
    yield heun
    del training, heun, edm2, net

    if importlib.util.find_spec("diffusers") is None:
        skipped.append("diffusers is not installed: the CIFAR-10 rows are skipped (pip install diffusers)")
        return
    cifar_overrides = {key: value for key, value in (("channels", sizes.cifar_channels),
                                                     ("norm_groups", sizes.cifar_norm_groups)) if value is not None}
    ddpm = c.build_pynodeta(c.CIFAR_CONFIG, cifar_overrides)
    unet = c.diffusers_cifar_unet(sizes.cifar_channels or 128, sizes.cifar_norm_groups or 32, device)
    images = (2 * torch.rand(sizes.cifar_batch, 3, 32, 32, generator=generator) - 1).to(device)
    for precision in ("fp32", "bf16"):
        yield c.Workload(f"CIFAR-10 DDPM training step, {precision}", "training step", sizes.cifar_batch,
                         [c.pynodeta_training("pynodeta cifar10_ddpm", ddpm, images, None, precision, device),
                          c.diffusers_training(unet, images, precision, device)], sizes.steps)
    batch = sizes.cifar_sample_batch
    yield c.Workload(f"CIFAR-10 DDPM DDIM-{sizes.ddim_steps} sampling", "sampling batch", batch,
                     [c.pynodeta_sampling("pynodeta ddim (generate_batches)", ddpm, "ddim", sizes.ddim_steps, batch,
                                          None, "fp32", device),
                      c.diffusers_ddim(unet, sizes.ddim_steps, batch, "fp32", device)])


def measure(workload: c.Workload, device: torch.device, warmup: int, rounds: int) -> dict:
    """Seconds per call and peak bytes of each contender, one entry per round, contenders alternated."""
    for contender in workload.contenders:
        for _ in range(warmup):
            contender.call()
        contender.release()
    synchronize(device)
    seconds = {x.name: [] for x in workload.contenders}
    peaks = {x.name: [] for x in workload.contenders}
    for round_index in range(rounds):
        order = workload.contenders if round_index % 2 == 0 else workload.contenders[::-1]
        for contender in order:
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            started = time.perf_counter()
            for _ in range(workload.steps_per_round):
                contender.call()
            synchronize(device)
            seconds[contender.name].append((time.perf_counter() - started) / workload.steps_per_round)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) - base + contender.resident_bytes()
                peaks[contender.name].append(peak)
            contender.release()
    return {"workload": workload.name, "unit": workload.unit, "batch": workload.batch, "warmup": warmup,
            "steps_per_round": workload.steps_per_round,
            "contenders": [{"name": x.name, "precision": x.precision, "parameters": x.parameters, "anchor": x.anchor,
                            "seconds": seconds[x.name], "peak_bytes": peaks[x.name] or None}
                           for x in workload.contenders]}


def _ratio(values: list[float] | None, anchor: list[float] | None) -> float | None:
    """Median over rounds of the contender's value over the anchor's in the same round."""
    if not values or not anchor:
        return None
    return statistics.median(v / a for v, a in zip(values, anchor))


def ratios(record: dict) -> dict[str, dict[str, float | None]]:
    """{contender: {"time": ÷ anchor, "memory": ÷ anchor}} of one workload (None where there is no anchor)."""
    anchor = next((x for x in record["contenders"] if x["anchor"]), None)
    return {x["name"]: {"time": _ratio(x["seconds"], anchor and anchor["seconds"]),
                        "memory": _ratio(x["peak_bytes"], anchor and anchor["peak_bytes"])}
            for x in record["contenders"]}


def _shown(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.3f}"


def _cell(value: float | None, scale: float = 1.0) -> object:
    return "n/a" if value is None else value * scale


def save_gpu_smoke_report(raw: dict, directory: Path | str = RESULTS_DIR) -> Path:
    """The report (one row per contender and workload, ratios to the reference) from :func:`main`'s raw record."""
    rows = []
    for record in raw["workloads"]:
        for x, (name, ratio) in zip(record["contenders"], ratios(record).items()):
            median = statistics.median(x["seconds"])
            peak = statistics.median(x["peak_bytes"]) if x["peak_bytes"] else None
            rows.append([record["workload"], name, x["precision"], record["batch"], x["parameters"], 1000 * median,
                         record["batch"] / median, _cell(peak, 2.0**-20), _cell(ratio["time"]),
                         _cell(ratio["memory"])])
    table = Table(["workload", "contender", "precision", "batch", "parameters", "ms per call (median)", "images/s",
                   "peak MiB", "time ÷ reference", "peak memory ÷ reference"], rows,
                  caption=f"{raw['rounds']} alternated rounds after {raw['warmup']} untimed training steps (sampling: "
                          f"{min(raw['warmup'], 1)} batch); a training round is {raw['steps']} steps, a sampling round "
                          "one batch; ratios are medians of per-round ratios")
    notes = ["Ratios below 1 mean pynodeta takes less time or memory than the reference implementation on the same "
             "device, batch and network size. Both sides run with train_edm2's backend settings (cudnn.benchmark on, "
             "TF32 off), without DDP and without EMA updates. NVlabs' network runs as train_edm2.py runs it, float16 "
             "inside Precond on CUDA (use_fp16=True), float32 weights and Adam; pynodeta's under bf16 autocast.",
             "Peak memory: max_memory_allocated during the contender's round above what was allocated when the round "
             "began (gradients released between rounds), plus the contender's weights, buffers and optimiser state."]
    if raw.get("tiny"):
        notes.insert(0, "--tiny: widths, batches and steps shrunk to check the script; not a measurement.")
    notes += raw.get("skipped", [])
    name, title = device_report(NAME, TITLE, raw)
    return save_report(name, title, [table], notes=notes, command=raw["command"], machine=raw_machine(raw),
                       directory=directory)


# train_edm2's training_loop settings, applied to both sides: cuDNN autotuning on, TF32 off
EDM2_BACKENDS = {("cudnn", "benchmark"): True, ("cudnn", "allow_tf32"): False, ("cuda.matmul", "allow_tf32"): False,
                 ("cuda.matmul", "allow_fp16_reduced_precision_reduction"): False}


@contextlib.contextmanager
def edm2_backends(device: torch.device):
    """:data:`EDM2_BACKENDS` on CUDA while the workloads run, the previous settings restored afterwards."""
    if device.type != "cuda":
        yield {}
        return
    owners = {key: operator.attrgetter(key[0])(torch.backends) for key in EDM2_BACKENDS}
    previous = {key: getattr(owners[key], key[1]) for key in EDM2_BACKENDS}
    try:
        for key, value in EDM2_BACKENDS.items():
            setattr(owners[key], key[1], value)
        yield {"cudnn_benchmark": True, "tf32": False}
    finally:
        for key, value in previous.items():
            setattr(owners[key], key[1], value)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--nvlabs-edm2", type=Path, default=None, help="a checkout of github.com/NVlabs/edm2")
    parser.add_argument("--tiny", action="store_true", help="tiny widths and batches: a self-check of every path")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed training steps per contender (default 5; tiny 1); samplers: one batch")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per round (default 10)")
    parser.add_argument("--rounds", type=int, default=None, help="alternated rounds (default 5)")
    parser.add_argument("--results-dir", type=Path, default=None, help="where the report and raw/ go")
    add_from_raw(parser, "measuring")
    args = parser.parse_args(argv)
    if rebuilt_from_raw(args, lambda raw: save_gpu_smoke_report(raw, args.results_dir or RESULTS_DIR)):
        return args.from_raw
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; run with --device cpu --tiny to check the script")
    if device.type == "cpu" and not args.tiny:
        parser.error("--device cpu: this benchmark is for GPUs; on the CPU run it with --tiny to check the script")
    sizes = c.TINY if args.tiny else c.Sizes()
    sizes = dataclasses.replace(sizes, **{k: v for k, v in (("warmup", args.warmup), ("steps", args.steps),
                                                              ("rounds", args.rounds)) if v is not None})
    directory = args.results_dir or (Path(tempfile.mkdtemp(prefix="gpu_smoke_")) if args.tiny else RESULTS_DIR)
    started, skipped, records = time.perf_counter(), [], []
    with edm2_backends(device) as backends:
        for workload in workloads(sizes, device, args.nvlabs_edm2, skipped):
            # one untimed batch warms a sampler up (its 50-odd evaluations tune every shape once)
            warmup = sizes.warmup if workload.unit == "training step" else min(sizes.warmup, 1)
            records.append(measure(workload, device, warmup, sizes.rounds))
            for name, ratio in ratios(records[-1]).items():
                print(f"{workload.name}: {name}: time ÷ reference {_shown(ratio['time'])}, peak memory ÷ reference "
                      f"{_shown(ratio['memory'])}", flush=True)
    for message in skipped:
        print(f"skipped: {message}")
    record = {"tiny": args.tiny, "sizes": dataclasses.asdict(sizes), "warmup": sizes.warmup, "steps": sizes.steps,
              "rounds": sizes.rounds, "backends": backends, "skipped": skipped, "workloads": records,
              "seconds_total": time.perf_counter() - started, **device_record(args.device)}
    raw_path = save_raw(device_report(NAME, "", record)[0], record, directory=Path(directory) / "raw")
    report = save_gpu_smoke_report(load_raw(raw_path), directory=directory)
    print(f"{record['seconds_total']:.0f} s; report {report}, raw {raw_path}")
    return report


if __name__ == "__main__":
    main()
