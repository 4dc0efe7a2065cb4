"""TA-BN with sync_stats=True over two gloo ranks equals TA-BN on the whole batch in one process."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pynodeta.nn import TABatchNorm2d

WORLD = 2


def _layer():
    torch.manual_seed(0)
    layer = TABatchNorm2d(3, M=4, sync_stats=True).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    return layer


def _batch():
    torch.manual_seed(1)
    return torch.randn(8, 3, 2, 2, dtype=torch.float64) * 2 + 1


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        layer, x = _layer(), _batch().chunk(WORLD)[rank].requires_grad_(True)
        layer(0.6, x).pow(2).sum().backward()
        torch.save({"x_grad": x.grad, "weight_grad": layer.weight.grad,
                    "running_mean": layer.running_mean, "running_var": layer.running_var}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process_on_the_whole_batch(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_worker, args=(str(tmp_path / "store"), out), nprocs=WORLD)
    ranks = [torch.load(f"{out}.{r}") for r in range(WORLD)]

    layer, x = _layer(), _batch().requires_grad_(True)  # not distributed: local statistics
    layer(0.6, x).pow(2).sum().backward()
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad)
    torch.testing.assert_close(sum(r["weight_grad"] for r in ranks), layer.weight.grad)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], layer.running_mean)
        torch.testing.assert_close(r["running_var"], layer.running_var)
