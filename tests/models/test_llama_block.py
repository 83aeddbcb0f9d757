"""The block's LLaMA options, each against a hand-written reference: RMSNorm against its formula, the SwiGLU
MLP against down(silu(gate x) * up x) in plain matmuls, grouped-query attention (every backend) against the
explicit repeat of each K/V head to its query heads, the per-head q/k norms against normalising each head by
hand before RoPE; the SwiGLU width rule (LLaMA-2-7B's 11008); and the config's one-line errors."""

from __future__ import annotations

import math

import pytest
import torch

from megarank.config import ModelConfig, load_config, validate
from megarank.errors import MegarankError
from megarank.models.attention import RotaryEmbedding, SelfAttention, attention
from megarank.models.block import Block, make_norm


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_rmsnorm_is_its_formula():
    torch.manual_seed(0)
    norm = make_norm("rmsnorm", 16, eps=1e-5, bias=True)  # never a bias
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 5, 16)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]
    close(norm(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight)


def test_swiglu_is_down_of_silu_gate_times_up():
    torch.manual_seed(0)
    block = Block(16, 2, 24, causal=True, bias=False, dropout=0.0, norm_eps=1e-5, attn_backend="math",
                  mlp="swiglu")
    mlp = block.mlp
    x = torch.randn(2, 4, 16)
    gate, up = x @ mlp.gate_proj.weight.T, x @ mlp.up_proj.weight.T
    close(mlp(x), (gate * torch.sigmoid(gate) * up) @ mlp.down_proj.weight.T)
    assert mlp.down_proj.weight.shape == (16, 24)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("causal", [True, False])
def test_gqa_kernel_equals_explicit_repeat(backend, causal):
    """Query head h reads K/V head h // (n_heads / n_kv_heads): 6 query heads over 2 K/V heads."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 6, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    expected = torch.cat([attention(q[:, h:h + 1], k[:, h // 3:h // 3 + 1], v[:, h // 3:h // 3 + 1], causal=causal,
                                    backend="math") for h in range(6)], dim=1)
    close(attention(q, k, v, causal=causal, backend=backend), expected)


def test_gqa_attention_equals_mha_with_repeated_kv_weights():
    """SelfAttention with 2 K/V heads against full multi-head attention whose k/v weights repeat each K/V head's
    rows for its group of query heads."""
    torch.manual_seed(0)
    rotary = RotaryEmbedding(4, 10000.0)
    gqa = SelfAttention(16, 4, causal=True, bias=False, dropout=0.0, backend="sdpa", rotary=rotary, n_kv_heads=2)
    mha = SelfAttention(16, 4, causal=True, bias=False, dropout=0.0, backend="math", rotary=rotary)
    assert gqa.k_proj.weight.shape == (8, 16)
    with torch.no_grad():
        for name in ("q_proj", "o_proj"):
            getattr(mha, name).weight.copy_(getattr(gqa, name).weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(2, 4, 16)
            getattr(mha, name).weight.copy_(w.repeat_interleave(2, dim=0).reshape(16, 16))
    x = torch.randn(2, 7, 16)
    close(gqa(x), mha(x))


def test_qk_norm_normalises_each_head_before_rope():
    torch.manual_seed(0)
    rotary = RotaryEmbedding(4, 10000.0)
    attn = SelfAttention(16, 4, causal=True, bias=False, dropout=0.0, backend="math", rotary=rotary, n_kv_heads=2,
                         qk_norm=True, norm_eps=1e-6)
    with torch.no_grad():
        attn.q_norm.weight.normal_()
        attn.k_norm.weight.normal_()
    assert attn.q_norm.weight.shape == (4,)
    x = torch.randn(2, 5, 16)

    def heads(t, n):
        return t.view(2, 5, n, 4).transpose(1, 2)

    def rms(t, w):
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    q = rotary(rms(heads(x @ attn.q_proj.weight.T, 4), attn.q_norm.weight))
    k = rotary(rms(heads(x @ attn.k_proj.weight.T, 2), attn.k_norm.weight)).repeat_interleave(2, dim=1)
    v = heads(x @ attn.v_proj.weight.T, 2).repeat_interleave(2, dim=1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(4)).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(),
                                                                     float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 16)
    close(attn(x), y @ attn.o_proj.weight.T)


@pytest.mark.parametrize("d_model, multiple, d_ff, width", [(4096, 256, None, 11008), (256, 256, None, 768),
                                                            (2048, 256, 8192, 8192), (64, 32, None, 192)])
def test_swiglu_width_is_two_thirds_of_4d_rounded_up(d_model, multiple, d_ff, width):
    cfg = ModelConfig(d_model=d_model, n_heads=8, mlp="swiglu", ffn_multiple=multiple, d_ff=d_ff)
    assert cfg.ffn_dim == width
    assert ModelConfig(d_model=d_model, n_heads=8).ffn_dim == 4 * d_model  # GELU keeps 4d


def test_defaults_build_the_gpt_of_before():
    """No new parameter, module type or width unless an option asks for it."""
    block = Block(16, 2, 64, causal=True, bias=True, dropout=0.0, norm_eps=1e-5, attn_backend="math")
    assert [n for n, _ in block.named_parameters()] == [
        "ln_1.weight", "ln_1.bias", "attn.q_proj.weight", "attn.q_proj.bias", "attn.k_proj.weight",
        "attn.k_proj.bias", "attn.v_proj.weight", "attn.v_proj.bias", "attn.o_proj.weight", "attn.o_proj.bias",
        "ln_2.weight", "ln_2.bias", "mlp.fc_in.weight", "mlp.fc_in.bias", "mlp.fc_out.weight", "mlp.fc_out.bias"]
    assert isinstance(block.ln_1, torch.nn.LayerNorm) and block.attn.q_norm is None


@pytest.mark.parametrize("kw, message", [
    (dict(norm="batchnorm"), "model.norm must be 'layernorm' or 'rmsnorm', got 'batchnorm'"),
    (dict(mlp="relu"), "model.mlp must be 'gelu', 'gelu_tanh' or 'swiglu', got 'relu'"),
    (dict(n_kv_heads=5), "model.n_kv_heads=5 does not divide model.n_heads=12"),
    (dict(n_kv_heads=0), "model.n_kv_heads=0 does not divide model.n_heads=12"),
    (dict(ffn_multiple=0), "model.ffn_multiple must be positive, got 0"),
])
def test_bad_options_are_one_line_errors(kw, message):
    with pytest.raises(MegarankError) as err:
        ModelConfig(**kw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_tp_must_divide_the_kv_heads():
    cfg = load_config("configs/llama_cpu_small.yaml", ["parallel.tp=4", "train.global_batch=64"])
    with pytest.raises(MegarankError, match=r"^model.n_kv_heads=2 is not divisible by parallel.tp=4"):
        validate(cfg, 4)
    validate(load_config("configs/llama_cpu_small.yaml", ["parallel.tp=2"]), 2)
