"""parallelize() against its contract: tensor parallelism, then activation checkpointing with the TP stream TP
returned, then compile with the ZeRO stage, each only as the training section asks (the steps recorded in
order); and on a real one-process GPT, the blocks train.activation_checkpointing names recompute."""

from __future__ import annotations

import pytest
import torch

from megarank.config import ModelConfig, TrainConfig
from megarank.models.gpt import GPT
from megarank.parallel import parallelize as module
from megarank.parallel.layout import ParallelLayout
from megarank.parallel.random import TPRandomState

ONE_PROCESS = ParallelLayout(tp_size=1, dp_size=1, tp_rank=0, dp_rank=0, tp_group=None, dp_group=None)


@pytest.mark.parametrize("compile_", [False, True])
def test_steps_run_in_order_with_what_each_needs(monkeypatch, compile_):
    calls = []
    stream = object()
    monkeypatch.setattr(module, "apply_tensor_parallel",
                        lambda model, layout, *, seed, device: calls.append(("tp", layout, seed)) or stream)
    monkeypatch.setattr(module, "apply_activation_checkpointing",
                        lambda model, mode, every, rng: calls.append(("ac", mode, every, rng)) or [])
    monkeypatch.setattr(module, "compile_blocks", lambda model, zero_stage: calls.append(("compile", zero_stage)) or 0)
    train = TrainConfig(activation_checkpointing="selective", activation_checkpointing_every=3, compile=compile_)
    returned = module.parallelize(torch.nn.Linear(1, 1), ONE_PROCESS, train, 3, seed=5, device=torch.device("cpu"))
    assert returned is stream
    expected = [("tp", ONE_PROCESS, 5), ("ac", "selective", 3, stream)] + ([("compile", 3)] if compile_ else [])
    assert calls == expected


def test_chosen_blocks_recompute_on_a_real_model():
    model = GPT(ModelConfig(n_layers=4, d_model=32, n_heads=4, seq_len=8, vocab_size=64))
    plain = [block.recompute for block in model.blocks]
    train = TrainConfig(activation_checkpointing="selective", activation_checkpointing_every=2)
    rng = module.parallelize(model, ONE_PROCESS, train, 1, seed=0, device=torch.device("cpu"))
    assert isinstance(rng, TPRandomState)
    changed = [i for i, block in enumerate(model.blocks) if block.recompute is not plain[i]]
    assert changed == [0, 2]
