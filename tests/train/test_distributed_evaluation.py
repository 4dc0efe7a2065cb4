"""``pynodeta evaluate --devices N / --cache`` (and under torchrun): images drawn in seeded blocks, shared among
gloo ranks, gathered on rank 0; the FD is that of one process, whatever the number of ranks or the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from pynodeta.cli import main
from pynodeta.data import DigitsDataModule
from pynodeta.metrics import DigitsFeatureExtractor, feature_statistics, save_reference_statistics
from pynodeta.train.evaluation_ranks import free_port
from pynodeta.train.run_loader import build_from_config
from pynodeta.train.sample_blocks import block_generator, draw_block

EDM2_NET = {"class_path": "pynodeta.models.diffusion.EDM2UNet",
            "init_args": {"img_resolution": 8, "img_channels": 1, "model_channels": 8,
                          "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": []}}
# 20 images in blocks of 8: blocks 0 and 2 (4 images) on rank 0, block 1 on rank 1
SMALL = ["--num", "20", "--block-size", "8", "--steps", "2", "--nll-images", "1", "--json", "--num-threads", "1"]


def _run(root, label_dim: int) -> str:
    """An untrained tiny EDM2 run folder (config.yaml, checkpoints/last.ckpt) whose labels change its output."""
    net = {**EDM2_NET, "init_args": {**EDM2_NET["init_args"], "label_dim": label_dim}}
    config = {"seed_everything": 0,
              "model": {"class_path": "pynodeta.train.DiffusionModule",
                        "init_args": {"model": net, "objective": {"class_path": "pynodeta.train.EDM2Objective",
                                                                  "init_args": {"logvar_channels": 8}},
                                      "averaging": "none",
                                      "evaluation": {"steps": 2, "num_samples": 20, "nll_num_images": 1,
                                                     "num_bins": 17, "guidance": 1.5 if label_dim else 1.0}}},
              "data": {"class_path": "pynodeta.data.DigitsDataModule",
                       "init_args": {"batch_size": 16, "normalization": "diffusion"}}}
    run = root / f"run{label_dim}"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    module, _ = build_from_config(run / "config.yaml")
    with torch.no_grad():  # EDM2's gains start at 0: make every path, labels included, count
        for name, parameter in module.model.named_parameters():
            if name.endswith("gain"):
                parameter.fill_(1.0)
    torch.save({"state_dict": module.state_dict(), "global_step": 1}, run / "checkpoints" / "last.ckpt")
    return str(run / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = DigitsDataModule(batch_size=16, normalization="diffusion")
    data.setup("test")
    test = torch.stack([data.test_set[i][0] for i in range(len(data.test_set))])
    save_reference_statistics(root / "digits_test.npz", *feature_statistics(DigitsFeatureExtractor()(test).double()))
    return {"unconditional": _run(root, 0), "conditional": _run(root, 10), "stats": str(root / "digits_test.npz")}


def _evaluate(capfd, checkpoint, tmp_path, *flags, status=0) -> dict | str:
    assert main(["evaluate", "--checkpoint", checkpoint, "--out", str(tmp_path / "e.png"), *SMALL, *flags]) == status
    out, err = capfd.readouterr()
    return json.loads(out) if status == 0 else err


def test_a_block_is_the_same_images_whatever_was_drawn_before(runs):
    from pynodeta.train.run_loader import load_run

    module = load_run(runs["unconditional"]).module.eval()
    options = dict(num=20, block_size=8, seed=5, sampler="euler_ancestral", steps=2)
    alone = draw_block(module, 1, **options).images
    draw_block(module, 0, **options)
    assert torch.equal(draw_block(module, 1, **options).images, alone)  # its own generator, stochastic steps included
    assert not torch.equal(draw_block(module, 2, **options).images[:4], alone[:4])
    seed_5, seed_6 = (torch.randn(3, generator=block_generator(seed, 1)) for seed in (5, 6))
    assert not torch.equal(seed_5, seed_6)
    # --precision reaches the block's sampler: the network runs in bf16, the images stay float32 and close
    bf16 = draw_block(module, 1, **options, precision="bf16").images
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, alone)
    assert (bf16 - alone).norm() <= 4 * 2 ** -8 * alone.norm()


@pytest.mark.slow  # spawns 2 processes, each importing torch and Lightning
def test_two_gloo_ranks_give_the_fd_of_one_process(runs, tmp_path, capfd):
    flags = ["--sampler", "euler_ancestral"]  # a stochastic sampler: each block's generator drives its steps too
    one = _evaluate(capfd, runs["unconditional"], tmp_path, "--devices", "1", *flags)
    two = _evaluate(capfd, runs["unconditional"], tmp_path, "--devices", "2", "--cache", str(tmp_path / "c"), *flags)
    assert (one["ranks"], two["ranks"], two["blocks_drawn"]) == (1, 2, 3)
    # the blocks the two ranks cached, read back by one process
    cached = _evaluate(capfd, runs["unconditional"], tmp_path, "--cache", str(tmp_path / "c"), *flags)
    assert (cached["blocks_drawn"], cached["blocks_cached"]) == (0, 3)
    assert cached["fd"] == pytest.approx(one["fd"], rel=1e-12)
    assert np.isfinite(one["fd"]) and one["fd"] > 0
    assert two["fd"] == pytest.approx(one["fd"], rel=1e-12)  # the same features, concatenated in block order
    assert two["fd_floor"] == one["fd_floor"] and two["sampler_nfe"] == one["sampler_nfe"]
    # fit's scheme (no --devices) draws other images from the same seed
    assert main(["evaluate", "--checkpoint", runs["unconditional"], "--out", str(tmp_path / "e.png"), *flags,
                 *(flag for flag in SMALL if flag not in ("--block-size", "8"))]) == 0
    fit_scheme = json.loads(capfd.readouterr().out)
    assert fit_scheme["fd"] != pytest.approx(one["fd"], rel=1e-6) and "ranks" not in fit_scheme


@pytest.mark.slow  # spawns 2 processes, each importing torch and Lightning
def test_two_ranks_class_conditional_against_saved_statistics(runs, tmp_path, capfd):
    flags = ["--reference-stats", runs["stats"]]
    one = _evaluate(capfd, runs["conditional"], tmp_path, "--devices", "1", *flags)
    two = _evaluate(capfd, runs["conditional"], tmp_path, "--devices", "2", *flags)
    assert one["guidance"] == two["guidance"] == 1.5
    assert two["fd"] == pytest.approx(one["fd"], rel=1e-9)  # moments summed over ranks: equal to round-off
    assert two["conditional_accuracy"] == one["conditional_accuracy"]  # every class in turn, as one process
    assert (tmp_path / "e.png").is_file()


def test_a_partial_cache_is_resumed_and_a_mismatching_one_refused(runs, tmp_path, capfd):
    cache = tmp_path / "cache"
    first = _evaluate(capfd, runs["unconditional"], tmp_path, "--cache", str(cache))
    assert (first["blocks_drawn"], first["blocks_cached"]) == (3, 0)
    assert sorted(p.name for p in cache.iterdir()) == ["block_0000000.npz", "block_0000001.npz",
                                                       "block_0000002.npz", "index.json"]
    # a kill: block 1 never finished, block 2 left only its temporary file
    (cache / "block_0000001.npz").unlink()
    (cache / "block_0000002.npz").rename(cache / ".block_0000002.npz.x1y2.tmp")
    again = _evaluate(capfd, runs["unconditional"], tmp_path, "--cache", str(cache))
    assert (again["blocks_drawn"], again["blocks_cached"]) == (2, 1)
    assert again["fd"] == pytest.approx(first["fd"], rel=1e-12) and again["sampler_nfe"] == first["sampler_nfe"]
    # 24 images: block 2 now holds 8 and is drawn again, blocks 0 and 1 are the same images
    more = _evaluate(capfd, runs["unconditional"], tmp_path, "--cache", str(cache), "--num", "24")
    assert (more["blocks_drawn"], more["blocks_cached"]) == (1, 2)
    error = _evaluate(capfd, runs["unconditional"], tmp_path, "--cache", str(cache), "--steps", "3", status=2)
    assert "holds the blocks of another evaluation (steps: cached 2, now 3)" in error
    error = _evaluate(capfd, runs["conditional"], tmp_path, "--cache", str(cache), status=2)
    assert "checkpoint_sha256: cached" in error
    (cache / "index.json").unlink()  # blocks whose index is gone cannot be checked: refused too
    error = _evaluate(capfd, runs["unconditional"], tmp_path, "--cache", str(cache), status=2)
    assert "holds blocks but no index.json" in error


@pytest.mark.slow  # spawns 2 processes, each importing torch and Lightning
def test_torchrun_ranks_join_the_group_without_spawning(runs, tmp_path, capfd):
    one = _evaluate(capfd, runs["unconditional"], tmp_path, "--devices", "1")
    port = free_port()
    command = [sys.executable, "-c", "import sys; from pynodeta.cli import main; sys.exit(main(sys.argv[1:]))",
               "evaluate", "--checkpoint", runs["unconditional"], "--out", str(tmp_path / "t.png"), *SMALL]
    processes = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, cwd=tmp_path))
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert outputs[1][0] == ""  # rank 1 prints nothing: rank 0 alone reports
    result = json.loads(outputs[0][0])
    assert result["ranks"] == 2 and result["fd"] == pytest.approx(one["fd"], rel=1e-12)
    assert "about 20 / 20 images over 2 ranks" in outputs[0][1]  # rank 0's progress, on stderr


def test_devices_under_torchrun_and_bad_numbers_are_refused(runs, tmp_path, capfd, monkeypatch):
    assert "--block-size must be >= 1" in _evaluate(capfd, runs["unconditional"], tmp_path, "--block-size", "0",
                                                    status=2)
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)
    error = _evaluate(capfd, runs["unconditional"], tmp_path, "--devices", "4", status=2)
    assert "WORLD_SIZE is 2" in error and "drop --devices" in error
