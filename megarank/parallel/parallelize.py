"""Parallelism as one step after the model is built, as torchtitan's parallelize: tensor parallelism, then
activation checkpointing, then torch.compile. Data parallelism and ZeRO sharding come after, from DeepSpeed
(train/engine.py), on the model this step returns.

The order matters: checkpointing wraps the blocks as TP left them (the recompute replays the sharded forward
and the TP-local dropout stream), and compile traces the final forward, recompute included.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from megarank.config.schema import TrainConfig
from megarank.parallel.activation_checkpointing import apply_activation_checkpointing
from megarank.parallel.compile import compile_blocks
from megarank.parallel.layout import ParallelLayout
from megarank.parallel.random import TPRandomState

from megarank.parallel.tensor_parallel import apply_tensor_parallel

log = logging.getLogger("megarank")


def parallelize(model: nn.Module, layout: ParallelLayout, train: TrainConfig, zero_stage: int, *, seed: int,
                device: torch.device) -> TPRandomState:
    """Apply TP, activation checkpointing and compile to `model` in place, as train.* and the layout ask;
    returns the TP-local RNG stream (saved with each checkpoint)."""
    # 1. Tensor parallelism: each TP rank keeps its slice of the sharded linears, embedding and LM head
    #    (by each parameter's role's TP style, models/roles.py); attention dropout draws from the TP-local stream returned here.
    tp_rng = apply_tensor_parallel(model, layout, seed=seed, device=device)

    # 2. Activation checkpointing: the chosen blocks keep only their input and recompute in backward,
    #    replaying both RNG streams, so losses and gradients stay those of the plain model.
    recomputed = apply_activation_checkpointing(model, train.activation_checkpointing,
                                                train.activation_checkpointing_every, tp_rng)
    if recomputed:
        log.info("activation checkpointing (%s): blocks %s recompute their forward in backward",
                 train.activation_checkpointing, ", ".join(map(str, recomputed)))

    # 3. torch.compile, per block and last: it traces the forward the two steps above left, and under ZeRO-3
    #    marks the blocks as DeepSpeed leaf modules so parameters are gathered outside the compiled code.
    if train.compile:
        compiled = compile_blocks(model, zero_stage)
        log.info("torch.compile: %d blocks (compiled at their first step)", compiled)
    return tp_rng
