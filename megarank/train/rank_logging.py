"""The attention rank of the model being trained, every analysis.every steps (megarank/analysis/live.py).

Every process calls it: under ZeRO-3 each layer's q/k/v/o projections are gathered from their data-parallel
partitions for the moment they are analysed (a collective), and under tensor parallelism each rank summarises
its own heads and the TP group averages, which is the model-wide mean because every rank holds as many heads.
Data-parallel replicas hold the same weights, so each computes the same numbers; rank 0 logs them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from megarank.analysis.live import attention_rank_summary
from megarank.config import AnalysisConfig
from megarank.parallel.layout import ParallelLayout


def attention_rank_record(module: nn.Module, analysis: AnalysisConfig, *, n_heads: int, partitioned: bool,
                          layout: ParallelLayout, device: torch.device) -> dict[str, float]:
    """{'rank/qk_mean/layer0': ..., 'rank/qk_mean': ..., 'effective_rank/ov_mean': ..., ...} for the model.
    n_heads: the model's total head count; partitioned: ZeRO-3 holds the parameters in partitions."""
    gather = None
    if partitioned:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters  # modifier_rank=None: read-only, re-partitioned on exit
    summary = attention_rank_summary(module, n_heads, analysis.rtol, gather=gather)
    if layout.tp_size == 1:
        return summary
    keys = sorted(summary)
    values = torch.tensor([summary[key] for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values, group=layout.tp_group)
    return {key: value / layout.tp_size for key, value in zip(keys, values.tolist())}
