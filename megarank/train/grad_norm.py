"""The global gradient norm of a step (before clipping), the same number on every rank.

DeepSpeed's ZeRO-1/2/3 and bf16 optimizers compute it inside their step (engine.get_global_grad_norm()).
At ZeRO-0 in fp32 the engine steps a plain torch optimizer and keeps none, so the loop asks for it here,
after the step's last backward (which has averaged the gradients over data-parallel ranks) and before
engine.step() frees the gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from megarank.models.roles import role_of
from megarank.parallel.layout import ParallelLayout


def engine_reports_grad_norm(engine) -> bool:
    """True when DeepSpeed's optimizer wrapper computes the norm in its step (what get_global_grad_norm reads)."""
    return hasattr(engine.optimizer, "_global_grad_norm")


@torch.no_grad()
def gradient_norm(model: nn.Module, layout: ParallelLayout) -> float:
    """2-norm of the gradients the parameters hold now, over the whole model: a TP-sharded parameter (its role's
    TP style is not 'replicated', megarank/models/roles.py) counts on every TP rank, a replicated one once."""
    squares = [p.grad.double().pow(2).sum() for name, p in model.named_parameters()
               if p.grad is not None and (layout.tp_rank == 0 or role_of(name).tp_style != "replicated")]
    device = next(model.parameters()).device
    total = torch.stack(squares).sum() if squares else torch.zeros((), dtype=torch.float64, device=device)
    if layout.tp_size > 1:
        dist.all_reduce(total, group=layout.tp_group)
    return total.sqrt().item()
