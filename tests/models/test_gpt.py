"""The GPT against hand-computed references: per-head factors read off q/k/v/o reproduce the attention output
(the layout megarank.analysis relies on), causality, tied head, position-table bound, GPT-2 init."""

from __future__ import annotations

import math

import pytest
import torch

from megarank.config import ModelConfig
from megarank.models.gpt import GPT


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{"n_layers": 2, "d_model": 32, "n_heads": 4, "seq_len": 16, "vocab_size": 50, **kw}))


def test_heads_read_off_projections_reproduce_attention():
    """y = sum_h W_O,h softmax(x W_Q,h^T (x W_K,h^T)^T / sqrt(d)) x W_V,h^T with the documented slices."""
    model = tiny()
    attn = model.blocks[0].attn
    x = torch.randn(1, 7, 32)
    dh = attn.d_head
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    expected = torch.zeros(1, 7, 32)
    for h in range(4):
        rows = slice(h * dh, (h + 1) * dh)
        wq, wk, wv = attn.q_proj.weight[rows], attn.k_proj.weight[rows], attn.v_proj.weight[rows]
        wo = attn.o_proj.weight[:, rows]
        scores = (x @ wq.T) @ (x @ wk.T).transpose(-1, -2) / math.sqrt(dh)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        expected += probs @ (x @ wv.T) @ wo.T
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_causal_and_shapes(position):
    model = tiny(position=position).eval()
    idx = torch.randint(0, 50, (2, 10))
    logits = model(idx)
    assert logits.shape == (2, 10, 50)
    idx2 = idx.clone()
    idx2[:, 6:] = 0
    torch.testing.assert_close(model(idx2)[:, :6], logits[:, :6])


def test_loss_is_cross_entropy_and_head_is_tied():
    model = tiny()
    idx, tgt = torch.randint(0, 50, (2, 10)), torch.randint(0, 50, (2, 10))
    expected = torch.nn.functional.cross_entropy(model(idx).view(-1, 50), tgt.view(-1))
    torch.testing.assert_close(model(idx, tgt), expected)
    assert model.lm_head.weight is model.wte.weight
    assert tiny(tie_embeddings=False).lm_head.weight is not tiny(tie_embeddings=False).wte.weight


def test_sequence_beyond_position_table():
    with pytest.raises(ValueError, match="exceeds the position table"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_gpt2_init_scales_residual_projections():
    model = GPT(ModelConfig(n_layers=4, d_model=256, n_heads=4, seq_len=8, vocab_size=100))
    assert model.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.fc_out.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert model.blocks[0].ln_1.weight.eq(1).all() and model.blocks[0].ln_1.bias is None
