"""torch.compile of the blocks (train.compile) against eager: the same losses within 1e-4 relative over 5
steps in one process and at TP=2 (the TP layers' collectives inside the compiled graph), under ZeRO-1 and under
ZeRO-3 with activation checkpointing and the chunked loss, with no graph break and no graph beyond the training
and evaluation ones."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from megarank.config import ModelConfig
from megarank.models.gpt import GPT
from megarank.parallel.activation_checkpointing import apply_activation_checkpointing
from megarank.parallel.compile import compile_blocks
from tests.helpers import run_training, train_losses


def _losses(compiled: bool, checkpointing: str, steps: int = 5) -> list[float]:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layers=2, d_model=32, n_heads=4, seq_len=16, vocab_size=64))
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


@pytest.mark.parametrize("checkpointing", ["none", "full"])
def test_compiled_matches_eager_without_graph_breaks(checkpointing):
    torch._dynamo.reset()
    counters.clear()
    compiled = _losses(True, checkpointing)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2  # one for training, one for evaluation, shared by the blocks
    assert compiled == pytest.approx(_losses(False, checkpointing), rel=1e-4)


COMMON = ("train.max_steps=5", "checkpoint.every=0", "parallel.tp=2", "train.eval_every=5")


@pytest.fixture(scope="module")
def tp2_eager(tiny_corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("compile") / "eager"
    run_training(run_dir, tiny_corpus, *COMMON, "zero.stage=1", nproc=2)
    return train_losses(run_dir)


# ZeRO-3 with every lever: its parameter hooks sit at the block boundary (leaf modules), outside the graph.
@pytest.mark.parametrize("levers", [("zero.stage=1",),
                                    ("zero.stage=3", "train.activation_checkpointing=full",
                                     "model.loss_chunk_tokens=20")], ids=["zero1", "zero3-ac-chunked"])
def test_compiled_tp2_matches_eager(levers, tp2_eager, tiny_corpus, tmp_path):
    proc = run_training(tmp_path / "compiled", tiny_corpus, *COMMON, *levers, "train.compile=true", nproc=2)
    assert "torch.compile: 2 blocks" in proc.stdout + proc.stderr
    compiled = train_losses(tmp_path / "compiled")
    assert sorted(compiled) == [1, 2, 3, 4, 5]
    for step, expected in tp2_eager.items():
        assert compiled[step] == pytest.approx(expected, rel=1e-4), f"step {step}"
