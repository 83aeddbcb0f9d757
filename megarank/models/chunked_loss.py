"""Next-token loss without the full fp32 logits (model.loss_chunk_tokens).

The plain loss forms the logits of every token at once (B·T × vocab, in fp32 for the softmax) and keeps them,
or the softmax, for backward: at 16k tokens × 50k vocabulary that is 3.3 GB, twice. Here the tokens go
through the LM head and the loss a chunk at a time, each chunk under activation checkpointing, so only one
chunk's logits and their gradient exist at once, in forward and in backward (the head's matmul is recomputed,
~1/3 more FLOPs on the head). The loss and gradients are the plain path's up to float summation order.
Works with any head and loss (the vocabulary-parallel ones under TP included; there each chunk's backward
all-reduces its own slice of the hidden-state gradient). Chunk means are weighted by token count, which is
the plain mean because no loss here ignores targets (no ignore_index in the data). On GPU a fused kernel (Liger,
Apple's cut-cross-entropy) could replace the inner function; none installs on CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def chunked_next_token_loss(head: nn.Module, loss_fn: Callable, hidden: torch.Tensor, targets: torch.Tensor,
                            chunk_tokens: int) -> torch.Tensor:
    """Mean of loss_fn(head(hidden).float(), targets) over all N tokens, chunk_tokens at a time.
    hidden (N, d_model), targets (N,); loss_fn returns the mean over its tokens."""
    n_tokens = hidden.shape[0]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n_tokens, chunk_tokens):
        stop = min(start + chunk_tokens, n_tokens)
        chunk_mean = checkpoint(_chunk_loss, head, loss_fn, hidden[start:stop], targets[start:stop],
                                use_reentrant=False)
        total = total + chunk_mean * (stop - start)
    return total / n_tokens


def _chunk_loss(head: nn.Module, loss_fn: Callable, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return loss_fn(head(hidden).float(), targets)
