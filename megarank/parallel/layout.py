"""The TP × DP process grid, built once and passed down (no module-level globals).

Ranks are laid out TP-major: rank = dp_rank * tp_size + tp_rank, so a TP group is tp_size consecutive ranks —
the GPUs of one node under the usual launchers, where the TP all-reduces are cheapest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from megarank.errors import MegarankError


@dataclass(frozen=True)
class ParallelLayout:
    tp_size: int
    dp_size: int
    tp_rank: int
    dp_rank: int
    tp_group: object
    """Process group of this rank's tensor-parallel peers (None for tp_size 1)."""
    dp_group: object
    """Process group of this rank's data-parallel peers (same tp_rank)."""

    @property
    def world_size(self) -> int:
        return self.tp_size * self.dp_size

    def describe(self) -> dict:
        return {"tp": self.tp_size, "dp": self.dp_size, "world_size": self.world_size}


def build_layout(tp_size: int) -> ParallelLayout:
    """Create the TP and DP groups on an initialised default process group (every rank must call this)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % tp_size:
        raise MegarankError(f"world size {world} is not divisible by parallel.tp={tp_size}")
    dp_size = world // tp_size
    tp_group = dp_group = None
    # new_group is collective: every rank creates every group, in the same order, and keeps its own.
    for d in range(dp_size):
        ranks = list(range(d * tp_size, (d + 1) * tp_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            tp_group = group
    for t in range(tp_size):
        ranks = list(range(t, world, tp_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            dp_group = group
    return ParallelLayout(tp_size=tp_size, dp_size=dp_size, tp_rank=rank % tp_size, dp_rank=rank // tp_size,
                          tp_group=tp_group, dp_group=dp_group)


class DeepSpeedMPU:
    """The `mpu=` object deepspeed.initialize takes, read off a ParallelLayout. DeepSpeed uses it to shard ZeRO
    state and average gradients within data-parallel groups, and to count TP-sharded parameters once per TP
    rank (and replicated ones once) in the global gradient norm."""

    def __init__(self, layout: ParallelLayout):
        self.layout = layout

    def get_model_parallel_rank(self) -> int:
        return self.layout.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.layout.tp_size

    def get_model_parallel_group(self):
        return self.layout.tp_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self.layout.dp_rank * self.layout.tp_size

    def get_data_parallel_rank(self) -> int:
        return self.layout.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.layout.dp_size

    def get_data_parallel_group(self):
        return self.layout.dp_group

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0
