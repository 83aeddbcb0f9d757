"""torch.compile of the blocks (train.compile) against eager, in one process, for the GPT block and the LLaMA
block (RMSNorm, SwiGLU, GQA, QK-norm, RoPE): the same losses within 1e-4 relative over 5 steps, with and without
activation checkpointing, with no graph break and no graph beyond the training and evaluation ones. At TP=2 under ZeRO-3 with every lever, in a real run: tests/train/test_levers.py."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from megarank.config import ModelConfig
from megarank.models.gpt import GPT
from megarank.parallel.activation_checkpointing import apply_activation_checkpointing
from megarank.parallel.compile import compile_blocks


BLOCKS = {"gpt": {}, "llama": dict(position="rotary", norm="rmsnorm", mlp="swiglu", n_kv_heads=2, qk_norm=True,
                                   ffn_multiple=16)}


def _losses(compiled: bool, checkpointing: str, steps: int = 5, block: str = "gpt") -> list[float]:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layers=2, d_model=32, n_heads=4, seq_len=16, vocab_size=64, **BLOCKS[block]))
    apply_activation_checkpointing(model, checkpointing)
    if compiled:
        compile_blocks(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, 64, (4, 16), generator=data)
        loss = model(x, x.roll(-1, dims=1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    with torch.no_grad():
        model.eval()(x)
    return losses


@pytest.mark.parametrize("block", list(BLOCKS))
@pytest.mark.parametrize("checkpointing", ["none", "full"])
def test_compiled_matches_eager_without_graph_breaks(checkpointing, block):
    torch._dynamo.reset()
    counters.clear()
    compiled = _losses(True, checkpointing, block=block)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2  # one for training, one for evaluation, shared by the blocks
    assert compiled == pytest.approx(_losses(False, checkpointing, block=block), rel=1e-4)
