"""Activation checkpointing on a GPU against the plain path: the same loss and gradients with dropout on, the
CUDA generator replayed on both streams (the default one and the TP-local one), and a step's peak memory read
from CUDA's allocator."""

from __future__ import annotations

import pytest
import torch

from megarank.config import ModelConfig
from megarank.models.gpt import GPT
from megarank.parallel.activation_checkpointing import apply_activation_checkpointing
from megarank.parallel.random import TPRandomState

CUDA = torch.device("cuda")


def _model(mode: str, **shape) -> tuple[GPT, TPRandomState]:
    torch.manual_seed(0)
    config = dict(n_layers=4, d_model=64, n_heads=4, seq_len=32, vocab_size=128, dropout=0.2) | shape
    model = GPT(ModelConfig(**config)).to(CUDA)
    rng = TPRandomState(seed=7, tp_rank=1, device=CUDA)
    for module in model.modules():
        if hasattr(module, "rng_region"):  # as parallelize does under TP: attention dropout on its own stream
            module.rng_region = rng.fork
    apply_activation_checkpointing(model, mode, 2, rng)
    return model.train(), rng


def _step(model: GPT, batch: int, seq: int, vocab: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.cuda.manual_seed(123)  # the default stream: embedding and residual dropout
    gen = torch.Generator(device=CUDA).manual_seed(5)
    x, y = (torch.randint(0, vocab, (batch, seq), device=CUDA, generator=gen) for _ in range(2))
    loss = model(x, y)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_same_loss_gradients_and_rng_as_plain(mode):
    plain, plain_rng = _model("none")
    recomputed, recomputed_rng = _model(mode)
    for _ in range(2):  # the second step starts from the TP stream the first one left
        loss, grads = _step(plain, 3, 32, 128)
        loss_ac, grads_ac = _step(recomputed, 3, 32, 128)
        torch.testing.assert_close(loss_ac, loss, rtol=1e-6, atol=0)
        for name in grads:
            torch.testing.assert_close(grads_ac[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)
        assert torch.equal(recomputed_rng.state, plain_rng.state)
        for model in (plain, recomputed):
            model.zero_grad(set_to_none=True)


def _step_peak_mb(mode: str) -> tuple[float, float]:
    """(loss, peak MB above the weights) of one step where activations dominate: 8 layers × 512, seq 512."""
    model, _ = _model(mode, n_layers=8, d_model=512, n_heads=8, seq_len=512, vocab_size=1024, dropout=0.0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    loss, _ = _step(model, 8, 512, 1024)
    torch.cuda.synchronize()
    return loss.item(), (torch.cuda.max_memory_allocated() - start) / 2**20


def test_full_checkpointing_cuts_step_peak_memory():
    plain_loss, plain = _step_peak_mb("none")
    full_loss, full = _step_peak_mb("full")
    assert full_loss == pytest.approx(plain_loss, rel=1e-6)
    assert full <= 0.6 * plain, (plain, full)
