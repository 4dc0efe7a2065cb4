"""The contenders of ``gpu_smoke.py``: pynodeta's shipped presets against NVlabs/edm2 and diffusers, each one
training step or one sampling batch behind the same zero-argument call.

A :class:`Contender` is built with its inputs already on the device, so the timed call does only what a
training loop or a sampling command does per step. NVlabs' code is imported from the user's checkout
(``--nvlabs-edm2``), never from this repository; diffusers is imported lazily.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parent.parent
EDM2_CONFIG = ROOT / "pynodeta" / "configs" / "edm2_img512_xs.yaml"
CIFAR_CONFIG = ROOT / "pynodeta" / "configs" / "cifar10_ddpm.yaml"
NVLABS_PRESET = "edm2-img512-xs"  # train_edm2.py's config_presets key


@dataclass(frozen=True)
class Sizes:
    """Widths, batches and step counts of one run: the papers' (default) or ``--tiny``'s self-check."""

    edm2_channels: int | None = None    # model_channels; None: the presets' own (EDM2-XS: 128 in both)
    edm2_blocks: int | None = None      # residual blocks per level; None: the presets' own (3)
    edm2_resolution: int = 64       # ImageNet-512 latents: 4 × 64 × 64
    edm2_classes: int = 1000        # the paper's class-conditional ImageNet models
    edm2_batch: int = 16
    edm2_sample_batch: int = 64
    heun_steps: int = 32            # EDM2's 32 noise levels, 63 evaluations
    cifar_channels: int | None = None   # base width; None: the config's own (DDPM's CIFAR-10 U-Net: 128)
    cifar_norm_groups: int | None = None  # GroupNorm groups; None: the configs' own (32 in both)
    cifar_batch: int = 128
    cifar_sample_batch: int = 128
    ddim_steps: int = 50
    warmup: int = 5                 # untimed calls per contender (cuDNN autotuning, allocator warm-up)
    steps: int = 10                 # timed training steps per contender and round
    rounds: int = 5                 # alternated rounds; the report keeps the median


TINY = Sizes(edm2_channels=8, edm2_blocks=1, edm2_resolution=16, edm2_classes=10, edm2_batch=2, edm2_sample_batch=2,
             heun_steps=2, cifar_channels=8, cifar_norm_groups=4, cifar_batch=2, cifar_sample_batch=2, ddim_steps=2,
             warmup=1, steps=1, rounds=2)


@dataclass
class Contender:
    """One side of a comparison: ``call()`` runs one training step or one sampling batch."""

    name: str
    precision: str
    call: Callable[[], object]
    modules: list[torch.nn.Module]
    optimizer: torch.optim.Optimizer | None = None   # training: its state is resident memory, its grads are not
    anchor: bool = False                              # the reference the ratios divide by

    def release(self) -> None:
        """Drop gradients between rounds (untimed), so that memory measured next starts from the same state."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for m in self.modules for p in m.parameters())

    def resident_bytes(self) -> int:
        """Weights, buffers and optimiser state: the memory this contender holds between calls."""
        tensors = [t for m in self.modules for t in (*m.parameters(), *m.buffers())]
        if self.optimizer is not None:
            tensors += [v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


@dataclass
class Workload:
    """A comparison: contenders doing the same work (``batch`` images per call), pynodeta's first."""

    name: str
    unit: str                       # "training step" or "sampling batch"
    batch: int
    contenders: list[Contender] = field(default_factory=list)
    steps_per_round: int = 1


def autocast(device: torch.device, precision: str):
    """bf16 autocast (what Lightning's ``precision="bf16-mixed"`` does), or nothing for float32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_pynodeta(config: Path, network_overrides: dict):
    """The shipped config's DiffusionModule (network, objective, optimiser preset), network arguments overridden."""
    from pynodeta.train.run_loader import build_from_config

    content = yaml.safe_load(config.read_text())
    content["model"]["init_args"]["model"]["init_args"].update(network_overrides)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / config.name
        path.write_text(yaml.safe_dump(content))
        module, _data = build_from_config(path)
    return module


def pynodeta_training(name: str, module, x0, labels, precision: str, device) -> Contender:
    """``DiffusionModule.training_step`` without Lightning's logging: labels split and dropped as there, the
    objective's loss, backward, the preset's clipping, optimiser and schedule step (as Lightning runs them)."""
    module.to(device).train()
    built = module.optim.build(module)
    optimizer, schedule = built["optimizer"], built["lr_scheduler"]["scheduler"]
    batch = (x0, labels) if labels is not None else x0
    step = [0]

    def call():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            images, one_hot = module.conditioning.split(batch, module.sample_shape)
            loss = module.objective.loss(module.model, images, module.conditioning.drop(one_hot), step=step[0]).mean()
        loss.backward()
        module.optim.clip(module.model)
        optimizer.step()
        schedule.step()
        step[0] += 1

    return Contender(name, precision, call, [module.model, module.objective], optimizer)


def pynodeta_sampling(name: str, module, sampler: str, steps: int, batch: int, labels, precision: str,
                      device) -> Contender:
    """``pynodeta sample``'s path (``generate_batches``: noise, the objective's levels, the sampler, the NaN check)."""
    from pynodeta.train.diffusion_sampling import generate_batches

    module.to(device)

    def call():
        with autocast(device, precision):
            for _ in generate_batches(module, batch, sampler, steps, class_labels=labels, batch_size=batch):
                pass

    return Contender(name, precision, call, [module.model, module.objective])


# --- NVlabs/edm2 -------------------------------------------------------------------------------------------

def import_nvlabs(checkout: Path):
    """NVlabs/edm2's modules from a checkout: (preset, networks_edm2, training_loop, edm_sampler)."""
    checkout = Path(checkout).resolve()
    if not (checkout / "training" / "networks_edm2.py").is_file():
        raise ValueError(f"--nvlabs-edm2 {str(checkout)!r} has no training/networks_edm2.py; pass a checkout of "
                         "https://github.com/NVlabs/edm2")
    sys.path.insert(0, str(checkout))  # their modules import each other as top-level packages (dnnlib, torch_utils)
    import train_edm2  # config_presets, exactly as their training command reads them
    from generate_images import edm_sampler
    from training import networks_edm2, training_loop

    return train_edm2.config_presets[NVLABS_PRESET], networks_edm2, training_loop, edm_sampler


def nvlabs_network(nvlabs, sizes: Sizes, device) -> torch.nn.Module:
    """train_edm2.py's network for the preset: ``Precond(model_channels, dropout, use_fp16=True)``; their
    Precond runs the U-Net in float16 on CUDA and in float32 elsewhere (networks_edm2.Precond.forward)."""
    preset, networks, _, _ = nvlabs
    channels = preset.channels if sizes.edm2_channels is None else sizes.edm2_channels
    blocks = {} if sizes.edm2_blocks is None else {"num_blocks": sizes.edm2_blocks}
    torch.manual_seed(0)
    net = networks.Precond(img_resolution=sizes.edm2_resolution, img_channels=4, label_dim=sizes.edm2_classes,
                           model_channels=channels, dropout=preset.dropout, use_fp16=True, **blocks)
    return net.to(device)


def nvlabs_precision(device) -> str:
    return "fp16 network (use_fp16)" if device.type == "cuda" else "fp32 (use_fp16 is CUDA-only)"


def nvlabs_training(nvlabs, net, x0, one_hot, device) -> Contender:
    """One iteration of training_loop.training_loop (one accumulation round): EDM2Loss, the sum scaled by
    loss_scaling / batch, learning_rate_schedule, nan_to_num of the gradients (force_finite), Adam (0.9, 0.99)."""
    preset, _, loop, _ = nvlabs
    net.train().requires_grad_(True)
    loss_fn = loop.EDM2Loss(P_mean=preset.P_mean, P_std=preset.P_std)
    optimizer = torch.optim.Adam(net.parameters(), betas=(0.9, 0.99))  # their optimizer_kwargs default
    batch, loss_scaling = x0.shape[0], 1  # train_edm2.py: --ls defaults to 1
    seen = [batch]  # images trained on, as state.cur_nimg (from one batch: a non-zero warm-up rate)

    def call():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net=net, images=x0, labels=one_hot)
        loss.sum().mul(loss_scaling / batch).backward()
        lr = loop.learning_rate_schedule(cur_nimg=seen[0], batch_size=batch, ref_lr=preset.lr, ref_batches=preset.decay)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=0, neginf=0, out=param.grad)
        optimizer.step()
        seen[0] += batch

    return Contender("NVlabs/edm2 Precond + EDM2Loss + Adam", nvlabs_precision(device), call, [net], optimizer,
                     anchor=True)


def nvlabs_sampling(nvlabs, net, steps: int, batch: int, one_hot, device) -> Contender:
    """generate_images.py's call: ``edm_sampler(net, noise, labels, num_steps)`` in float32 around their
    network (float16 inside on CUDA), under no_grad."""
    edm_sampler = nvlabs[3]
    shape = (batch, net.img_channels, net.img_resolution, net.img_resolution)

    def call():
        net.eval()
        with torch.no_grad():
            edm_sampler(net, torch.randn(shape, device=device), one_hot, num_steps=steps)

    return Contender("NVlabs/edm2 edm_sampler", nvlabs_precision(device), call, [net], anchor=True)


# --- diffusers ---------------------------------------------------------------------------------------------

def diffusers_cifar_unet(channels: int, norm_groups: int, device) -> torch.nn.Module:
    """UNet2DModel with google/ddpm-cifar10-32's config (block_out_channels (c, 2c, 2c, 2c), two ResNet blocks
    per level, attention at 16×16, GroupNorm 32 with eps 1e-6, no downsample padding, freq_shift 1), built
    without a download; dropout 0.1 as DDPM's CIFAR-10 training (the released config omits it)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(channels, 2 * channels, 2 * channels, 2 * channels),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=norm_groups, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False,
                       freq_shift=1, mid_block_scale_factor=1, act_fn="silu", time_embedding_type="positional",
                       dropout=0.1).to(device)


def diffusers_training(unet, x0, precision: str, device, warmup_steps: int = 5000) -> Contender:
    """diffusers' unconditional training step: DDPMScheduler.add_noise, MSE on ε, clipping at norm 1, then
    Adam at 2e-4 with the same linear warm-up as pynodeta's DiffusionAdam (AdamW with weight decay 0)."""
    from diffusers import DDPMScheduler

    unet.train()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))

    def call():
        optimizer.zero_grad(set_to_none=True)
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), device=device)
        with autocast(device, precision):
            loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()

    return Contender("diffusers UNet2DModel", precision, call, [unet], optimizer, anchor=True)


def diffusers_ddim(unet, steps: int, batch: int, precision: str, device) -> Contender:
    """DDIMPipeline's loop (eta 0): set_timesteps, then ``unet(x, t).sample`` and ``scheduler.step`` per step."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)

    def call():
        unet.eval()
        scheduler.set_timesteps(steps)
        x = torch.randn(batch, 3, 32, 32, device=device)
        with torch.no_grad(), autocast(device, precision):
            for t in scheduler.timesteps:
                x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample

    return Contender("diffusers UNet2DModel + DDIMScheduler", precision, call, [unet], anchor=True)
