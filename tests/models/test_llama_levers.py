"""The GPT's levers on the tiny LLaMA (RMSNorm, SwiGLU, GQA, q/k norms, RoPE), each against the plain path of
the same model: activation checkpointing (dropout on, both RNG streams replayed) and the chunked loss give the
same loss and gradients, and a bf16 autocast forward stays within bf16 error of fp32."""

from __future__ import annotations

import pytest
import torch

from megarank.config import ModelConfig
from megarank.models.gpt import GPT
from megarank.parallel.activation_checkpointing import apply_activation_checkpointing
from megarank.parallel.random import TPRandomState

SHAPE = dict(n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, seq_len=16, vocab_size=64, position="rotary",
             norm="rmsnorm", mlp="swiglu", ffn_multiple=16, qk_norm=True)


def step(model: GPT, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(123)
    model.zero_grad()
    loss = model(ids, ids.roll(-1, 1))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def build(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**SHAPE, **kw})).train()


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_equals_plain(mode):
    ids = torch.randint(0, 64, (2, 16))
    models = []
    for recompute in (False, True):
        model = build(dropout=0.2)
        rng = TPRandomState(seed=7, tp_rank=0, device=torch.device("cpu"))
        for block in model.blocks:
            block.attn.rng_region = rng.fork
        if recompute:
            assert apply_activation_checkpointing(model, mode, 2, rng)
        models.append(step(model, ids))
    (plain_loss, plain), (loss, grads) = models
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    for name, grad in plain.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_chunked_loss_equals_plain():
    ids = torch.randint(0, 64, (2, 16))
    plain_loss, plain = step(build(), ids)
    loss, grads = step(build(loss_chunk_tokens=5), ids)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
    for name, grad in plain.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_autocast_stays_close_to_fp32():
    model = build().eval()
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        fp32 = model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(ids)
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, rtol=0, atol=0.05 * fp32.abs().max().item())
