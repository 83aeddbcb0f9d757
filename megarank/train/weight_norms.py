"""The Frobenius norm of each weight-decay group's parameters (attention, MLP, other, no_decay), logged beside
the attention ranks every analysis.every steps: the quantity weight decay acts on, per group.

    weight_norm/<group> = sqrt(Σ over the group's tensors of Σ w²)   (the groups of megarank/optim/groups.py)
    weight_norm/total   = the same over every trainable parameter

Exact for the whole model under any layout. Tensor parallelism: a sharded parameter (its role's TP style
column, row or vocab, megarank/models/roles.py) contributes each TP rank's slice, summed over the
TP group; a replicated one (norm gains, row-parallel biases, ViT's class token and head) is whole on every TP
rank and counted once, from TP rank 0. ZeRO-3: each parameter is gathered from its data-parallel partitions
for the moment its squares are summed (deepspeed.zero.GatheredParameters, one tensor at a time, so memory
stays at one parameter), which is a collective: every rank must call. Data-parallel replicas hold the same
weights and compute the same numbers; rank 0 logs them.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist
from torch import nn

from megarank.config.schema import OptimConfig
from megarank.models.roles import role_of
from megarank.optim.groups import build_param_groups
from megarank.parallel.layout import ParallelLayout


@torch.no_grad()
def weight_norm_record(module: nn.Module, optim: OptimConfig, *, partitioned: bool, layout: ParallelLayout,
                       device: torch.device) -> dict[str, float]:
    """{'weight_norm/attn': ..., 'weight_norm/mlp': ..., 'weight_norm/other': ..., 'weight_norm/no_decay': ...,
    'weight_norm/total': ...} for the model (the plain module, TP-sharded or ZeRO-3-partitioned).
    partitioned: ZeRO-3 holds the parameters in partitions."""
    groups = build_param_groups(module, optim)  # the optimizer's groups, coverage checked as at start-up
    names = {id(param): name for name, param in module.named_parameters()}
    gather = None
    if partitioned:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters  # modifier_rank=None: read-only, re-partitioned on exit
    # [sharded squares, replicated squares] per group, in float64 so millions of squares sum without loss
    squares = torch.zeros(len(groups), 2, dtype=torch.float64, device=device)
    for i, group in enumerate(groups):
        for param in group["params"]:
            replicated = role_of(names[id(param)]).tp_style == "replicated"
            with gather([param]) if gather is not None else contextlib.nullcontext():
                if replicated and layout.tp_rank != 0:
                    continue  # still inside the gather: under ZeRO-3 every rank joins every collective
                squares[i, int(replicated)] += param.detach().to(device=device, dtype=torch.float64).square().sum()
    if layout.tp_size > 1:  # add up the TP slices (replicated terms are non-zero on TP rank 0 only)
        dist.all_reduce(squares, group=layout.tp_group)
    per_group = squares.sum(1).tolist()
    record = {f"weight_norm/{group['name']}": math.sqrt(value) for group, value in zip(groups, per_group)}
    record["weight_norm/total"] = math.sqrt(sum(per_group))
    return record
