"""The one collective of a training step: what every rank must agree on after the step — the global batch's
loss, whether the step diverged, whether to stop for a preemption — in one all-reduce and one copy to the
host, instead of one blocking all-reduce and `.item()` for each.

The loss enters from TP rank 0 of each data-parallel slot only (the other TP ranks hold the same value and add
a zero), so the summed loss is the sum over data-parallel ranks and the logged mean is that sum divided by
grad_accum × dp, as before. The two flags are counts of ranks that raised them: any count above zero holds on
every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megarank.parallel.layout import ParallelLayout


@dataclass(frozen=True)
class StepAgreement:
    loss: float
    """Mean loss over the global batch (every micro step of every data-parallel rank)."""
    diverged: bool
    """Some rank saw a non-finite loss or gradient norm: stop before saving this step."""
    stop: bool
    """Some rank was asked to stop (SIGTERM): save this step and exit."""


def agree_on_step(loss_sum: torch.Tensor, grad_norm: float, stop_requested: bool, *, layout: ParallelLayout,
                  grad_accum: int) -> StepAgreement:
    """Collective over every rank. loss_sum: this rank's float32 sum of its micro steps' mean losses."""
    loss_part = loss_sum if layout.tp_rank == 0 else torch.zeros_like(loss_sum)
    # divergence (train/divergence.py): a non-finite loss or gradient norm; the loss checked on the device
    nonfinite = (~torch.isfinite(loss_sum)).float() + float(not math.isfinite(grad_norm))
    packed = torch.stack([loss_part, nonfinite, torch.full_like(loss_sum, float(stop_requested))])
    dist.all_reduce(packed)  # SUM over the whole world; the loss first, as the one value the old reduce carried
    total, nonfinite_ranks, stop_ranks = packed.tolist()
    loss = total / (grad_accum * layout.dp_size)
    return StepAgreement(loss=loss, diverged=nonfinite_ranks > 0 or not math.isfinite(loss), stop=stop_ranks > 0)
