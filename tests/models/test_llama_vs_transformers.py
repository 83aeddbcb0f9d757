"""The whole LLaMA-style GPT (model.norm=rmsnorm, mlp=swiglu, n_kv_heads, rotary; qk_norm for Qwen3) against
`transformers`' own definitions: LlamaForCausalLM and Qwen3ForCausalLM built from the same shape, the megarank
model's weights copied in by name, logits on a batch within 1e-5 in fp32. Every weight is drawn at random
(norm gains included), so a swapped or mis-shaped tensor shows. Nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

from megarank.config import ModelConfig
from megarank.models.gpt import GPT

transformers = pytest.importorskip("transformers")

SHAPE = dict(n_layers=2, d_model=64, n_heads=8, n_kv_heads=2, seq_len=16, vocab_size=96, position="rotary",
             rope_base=5000.0, norm="rmsnorm", mlp="swiglu", ffn_multiple=32, norm_eps=1e-6)


def hf_name(name: str) -> str:
    """megarank's parameter name -> the Llama/Qwen3 one."""
    if name == "wte.weight":
        return "model.embed_tokens.weight"
    if name == "ln_f.weight":
        return "model.norm.weight"
    if name == "lm_head.weight":
        return name
    _, layer, rest = name.split(".", 2)
    rest = (rest.replace("ln_1.", "input_layernorm.").replace("ln_2.", "post_attention_layernorm.")
            .replace("attn.", "self_attn."))
    return f"model.layers.{layer}.{rest}"


def hf_config(cfg: ModelConfig, family: str):
    kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
              num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
              max_position_embeddings=cfg.seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_base,
              tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, head_dim=cfg.d_head)
    if family == "qwen3":
        return transformers.Qwen3Config(**kw)
    return transformers.LlamaConfig(**kw, mlp_bias=False)


@pytest.mark.parametrize("family, tie, qk_norm, kv", [("llama", True, False, 2), ("llama", False, False, 8),
                                                       ("llama", True, False, 1), ("qwen3", True, True, 2)])
def test_logits_match_transformers(family, tie, qk_norm, kv):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**SHAPE, "tie_embeddings": tie, "qk_norm": qk_norm, "n_kv_heads": kv,
                         "attn_backend": "math"})
    ours = GPT(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))  # norm gains around 1
    hf_cls = transformers.Qwen3ForCausalLM if family == "qwen3" else transformers.LlamaForCausalLM
    theirs = hf_cls(hf_config(cfg, family)).eval()
    state = {hf_name(n): p.detach() for n, p in ours.named_parameters()}
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if tie else set()), (missing, unexpected)
    ids = torch.randint(0, cfg.vocab_size, (3, cfg.seq_len))
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits
        for backend in ("math", "sdpa"):
            for block in ours.blocks:
                block.attn.backend = backend
            torch.testing.assert_close(ours(ids), expected, rtol=0, atol=1e-5, msg=backend)
