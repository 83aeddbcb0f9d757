"""The step's one all-reduce (train/step_sync.py) in two real gloo processes, at TP=1 × DP=2 and TP=2 × DP=1,
against the three collectives it replaced: the mean loss bit for bit what the old data-parallel all-reduce of
the loss sum and the same division gave, a TP pair's loss counted once, and a non-finite loss or gradient
norm or a stop request on one rank seen on every rank."""

from __future__ import annotations

import json
import math
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megarank.parallel.layout import build_layout
from megarank.train.step_sync import agree_on_step
from tests.helpers import free_port

GRAD_ACCUM = 3
# per-rank float32 loss sums chosen so that their float32 sum rounds: the old path's rounding must be kept
LOSS_SUMS = [10.123456789, 7.000000123]


def _old_mean(loss_sum: torch.Tensor, layout) -> float:
    """The loop before: one all-reduce of the loss sum over the data-parallel group, then .item() / (accum × dp)."""
    reduced = loss_sum.clone()
    dist.all_reduce(reduced, group=layout.dp_group)
    return reduced.item() / (GRAD_ACCUM * layout.dp_size)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    for tp in (1, 2):
        layout = build_layout(tp)
        # TP ranks of one data-parallel slot compute the same loss; data-parallel ranks different ones
        loss_sum = torch.tensor(LOSS_SUMS[layout.dp_rank], dtype=torch.float32)
        agreed = agree_on_step(loss_sum, 1.5, False, layout=layout, grad_accum=GRAD_ACCUM)
        results[f"tp{tp}"] = {"loss": agreed.loss, "old": _old_mean(loss_sum, layout),
                              "flags": [agreed.diverged, agreed.stop]}
        nan_loss = torch.tensor(float("nan") if rank == 1 else LOSS_SUMS[layout.dp_rank])
        results[f"tp{tp}_nan_loss_on_rank1"] = agree_on_step(nan_loss, 1.5, False, layout=layout,
                                                             grad_accum=GRAD_ACCUM).diverged
        inf_norm = float("inf") if rank == 1 else 1.5
        results[f"tp{tp}_inf_norm_on_rank1"] = agree_on_step(loss_sum, inf_norm, False, layout=layout,
                                                             grad_accum=GRAD_ACCUM).diverged
        stop = agree_on_step(loss_sum, 1.5, rank == 1, layout=layout, grad_accum=GRAD_ACCUM)
        results[f"tp{tp}_stop_on_rank1"] = [stop.stop, stop.diverged]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


def test_one_all_reduce_agrees_like_the_three_it_replaced(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1], "every rank must see the same outcome"
    got = ranks[0]
    # TP=1 × DP=2: the two ranks' sums added, as the old data-parallel all-reduce added them, bit for bit
    dp_sum = (torch.tensor(LOSS_SUMS[0]) + torch.tensor(LOSS_SUMS[1])).item()
    assert got["tp1"]["loss"] == got["tp1"]["old"] == dp_sum / (GRAD_ACCUM * 2)
    # TP=2 × DP=1: both ranks hold rank 0's loss, counted once
    assert got["tp2"]["loss"] == got["tp2"]["old"] == torch.tensor(LOSS_SUMS[0]).item() / GRAD_ACCUM
    assert got["tp1"]["flags"] == got["tp2"]["flags"] == [False, False]
    for tp in ("tp1", "tp2"):  # at TP=2 rank 1's loss is not summed, yet its nan still stops both ranks
        assert got[f"{tp}_nan_loss_on_rank1"] is True
        assert got[f"{tp}_inf_norm_on_rank1"] is True
        assert got[f"{tp}_stop_on_rank1"] == [True, False]
    assert not math.isnan(got["tp2"]["loss"])
