"""Megatron-style tensor-parallel layers, built from the full single-device layer by slicing its weights.

Every TP rank builds the same full model from the same seed, then keeps its slice: the sharded model holds
exactly the TP=1 weights, so runs at different TP sizes are comparable step for step.

    ColumnParallelLinear  W (out/tp, in)   input replicated -> output features split     (roles q, k, v, mlp_in)
    RowParallelLinear     W (out, in/tp)   input features split -> partial sums reduced  (roles o, mlp_out)
    VocabParallelEmbedding  rows [v0, v1) of the table; other ids contribute zeros, then all-reduce
    vocab_parallel_cross_entropy  loss from vocab-sharded logits without gathering them
    LocalHeadsRMSNorm     the per-head q/k norm (model.qk_norm) on this rank's heads: the gain is replicated, and
                          its gradient, which each rank sees only for its own heads, is summed over TP in backward

Which layer a parameter gets is its role's TP style (megarank/models/roles.py), applied by tensor_parallel.py.
Each layer takes `weight=` an already-sharded weight to share instead of slicing its own (a head tied to the
token embedding). Sharded parameters carry `tensor_model_parallel = True`, Megatron's attribute, for DeepSpeed,
whose own gradient norm reads it; megarank itself asks the roles table whether a parameter is sharded.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megarank.parallel.mappings import copy_to_tp_region, reduce_from_tp_region


def _shard(tensor: torch.Tensor, dim: int, rank: int, world: int) -> nn.Parameter:
    param = nn.Parameter(tensor.detach().chunk(world, dim=dim)[rank].clone())
    param.tensor_model_parallel = True
    param.partition_dim = dim
    return param


class ColumnParallelLinear(nn.Module):
    def __init__(self, full: nn.Linear, *, tp_rank: int, tp_size: int, group, weight: nn.Parameter | None = None):
        super().__init__()
        self.group = group
        self.weight = weight if weight is not None else _shard(full.weight, 0, tp_rank, tp_size)
        self.bias = _shard(full.bias, 0, tp_rank, tp_size) if full.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) replicated -> (..., out/tp) this rank's output features."""
        return F.linear(copy_to_tp_region(x, self.group), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    def __init__(self, full: nn.Linear, *, tp_rank: int, tp_size: int, group, weight: nn.Parameter | None = None):
        super().__init__()
        self.group = group
        self.weight = weight if weight is not None else _shard(full.weight, 1, tp_rank, tp_size)
        # the bias is added once, after the reduction: replicated, not sharded
        self.bias = nn.Parameter(full.bias.detach().clone()) if full.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in/tp) this rank's input features -> (..., out) full output on every rank."""
        y = reduce_from_tp_region(F.linear(x, self.weight), self.group)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    def __init__(self, full: nn.Embedding, *, tp_rank: int, tp_size: int, group,
                 weight: nn.Parameter | None = None):
        super().__init__()
        self.group = group
        self.weight = weight if weight is not None else _shard(full.weight, 0, tp_rank, tp_size)
        self.vocab_start = tp_rank * self.weight.shape[0]
        self.vocab_end = self.vocab_start + self.weight.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local = (ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp_region(out, self.group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token loss log(sum_v exp z_v) - z_target from logits split over the vocabulary (Megatron-LM)."""

    @staticmethod
    def forward(ctx, logits, targets, group, vocab_start):
        logits = logits.float()
        logits_max = logits.max(dim=-1).values
        dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - logits_max.unsqueeze(-1)  # for stability; cancels in the loss

        vocab_local = logits.shape[-1]
        outside = (targets < vocab_start) | (targets >= vocab_start + vocab_local)
        local_targets = (targets - vocab_start).masked_fill(outside, 0)
        rows = torch.arange(logits.shape[0], device=logits.device)
        target_logit = shifted[rows, local_targets].masked_fill(outside, 0.0)
        dist.all_reduce(target_logit, group=group)  # exactly one rank holds each target

        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        dist.all_reduce(sum_exp, group=group)
        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), local_targets, outside)
        return sum_exp.log() - target_logit

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_targets, outside = ctx.saved_tensors
        grad = softmax.clone()
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad[rows, local_targets] -= (~outside).to(grad.dtype)
        return grad * grad_loss.unsqueeze(-1), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, group,
                                 vocab_start: int) -> torch.Tensor:
    """Mean next-token loss; logits (N, vocab/tp) this rank's vocab slice, targets (N,) global ids."""
    return _VocabParallelCrossEntropy.apply(logits, targets, group, vocab_start).mean()


class LocalHeadsRMSNorm(nn.Module):
    """An RMSNorm over d_head applied inside the TP region, to this rank's heads only (Megatron all-reduces the
    grads of such qk-layernorm weights over TP after backward; here the gain enters through copy_to_tp_region,
    whose backward does it). The gain stays whole and equal on every rank: role style 'replicated'."""

    def __init__(self, full: nn.RMSNorm, *, group):
        super().__init__()
        self.group, self.eps, self.normalized_shape = group, full.eps, tuple(full.normalized_shape)
        self.weight = full.weight  # the same parameter: nothing to slice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_head) of this rank's heads."""
        return F.rms_norm(x, self.normalized_shape, copy_to_tp_region(self.weight, self.group), self.eps)
