"""Activation checkpointing of transformer blocks, applied to a built (and tensor-parallel) model as a separate
step, like parallelize (torchtitan's apply_ac).

A checkpointed block keeps only its input for backward and runs its forward again there. Modes
(train.activation_checkpointing):
- 'full': every block. Activation memory falls to one block's worth plus the block inputs.
- 'selective': every k-th block (train.activation_checkpointing_every; torchtitan's per-layer selective AC),
  a knob between memory and the ~1/3 extra compute of full. Megatron's other selective mode, recomputing only
  the attention core, saves nothing here: the flash and SDPA kernels megarank uses never store the T×T
  scores, they already recompute them in backward.

Recomputation must see the same randomness. torch's checkpoint restores the default RNG stream (dropout on
replicated activations); the TP-local stream (attention dropout on this rank's heads, parallel/random.py) is
swapped by hand, so each checkpointed forward records where that stream stood and the recompute replays
from there (Megatron's CheckpointFunction does the same with its CUDA RNG tracker).

Parameter names do not change (the block is not wrapped), so decay groups, checkpoints and the rank tools
see the same model at every setting.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from megarank.parallel.random import TPRandomState

MODES = ("none", "full", "selective")


def checkpointed_block_indices(n_layers: int, mode: str, every: int) -> list[int]:
    """Which blocks recompute: all for 'full', every `every`-th (0, k, 2k, ...) for 'selective'."""
    if mode == "none":
        return []
    if mode == "full":
        return list(range(n_layers))
    return list(range(0, n_layers, every))


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int = 2,
                                   tp_rng: TPRandomState | None = None) -> list[int]:
    """Make the chosen blocks of model.blocks recompute in backward; returns their indices."""
    chosen = checkpointed_block_indices(len(model.blocks), mode, every)
    for index in chosen:
        model.blocks[index].recompute = _recompute_with(tp_rng)
    return chosen


def _recompute_with(tp_rng: TPRandomState | None) -> Callable:
    def run(forward: Callable, x: torch.Tensor) -> torch.Tensor:
        # the TP stream as this forward found it: the recompute starts there, then puts back the later state
        saved = tp_rng.state.clone() if tp_rng is not None else None

        @contextmanager
        def replaying_tp_stream():
            if tp_rng is None:
                yield
                return
            current = tp_rng.state
            tp_rng.state = saved.clone()
            try:
                yield
            finally:
                tp_rng.state = current

        def contexts():
            return _nothing(), replaying_tp_stream()

        return checkpoint(forward, x, use_reentrant=False, preserve_rng_state=True, context_fn=contexts)

    return run


@contextmanager
def _nothing():
    yield
