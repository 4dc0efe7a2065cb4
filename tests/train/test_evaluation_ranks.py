"""The one collective of a sharded evaluation: every rank enters it once, a failing rank included, so no rank
waits forever; rank 0 receives the results in rank order and raises any rank's error."""

from __future__ import annotations

import json

import pytest
import torch.multiprocessing as mp

from pynodeta.train.evaluation_ranks import EvaluationRanks, RankFailure


def _fail(rank: int):
    raise ValueError(f"block of rank {rank} is NaN")


def _worker(rank: int, store: str, out: str) -> None:
    ranks = EvaluationRanks.join(rank, 2, rank, "cpu", init_method=f"file://{store}")
    outcome = {}
    try:
        outcome["ok"] = ranks.gather(lambda: {"rank": rank, "blocks": list(range(rank, 7, 2))})
        try:  # a second evaluation in which rank 1 fails: rank 0 must not hang
            ranks.gather(lambda: _fail(rank) if rank == 1 else rank)
        except (RankFailure, ValueError) as error:
            outcome["error"] = f"{type(error).__name__}: {error}"
    finally:
        ranks.leave()
    with open(f"{out}.{rank}", "w") as file:
        json.dump(outcome, file)


@pytest.mark.slow  # spawns 2 processes
def test_rank_zero_gathers_in_rank_order_and_raises_another_ranks_error(tmp_path):
    out = str(tmp_path / "out")
    mp.spawn(_worker, args=(str(tmp_path / "store"), out), nprocs=2)
    outcomes = [json.loads(open(f"{out}.{rank}").read()) for rank in range(2)]
    assert outcomes[0]["ok"] == [{"rank": r, "blocks": list(range(r, 7, 2))} for r in range(2)]
    assert outcomes[1]["ok"] is None  # only rank 0 receives
    assert outcomes[0]["error"] == "RankFailure: rank 1: ValueError: block of rank 1 is NaN"
    assert outcomes[1]["error"] == "ValueError: block of rank 1 is NaN"  # raised where it happened too


def test_one_process_gathers_without_a_group():
    assert EvaluationRanks().gather(lambda: 5) == [5]
    with pytest.raises(ValueError, match="rank 0"):
        EvaluationRanks().gather(lambda: _fail(0))
