"""megarank/hf/layouts.py: megarank's GPT converted to GPT-2 against `transformers`' GPT2LMHeadModel (the
reference), and back: logits of the converted model equal megarank's within 1e-5 (fp32), with and without
biases, tied and untied heads; an HF GPT-2 built by `transformers` converts to a megarank GPT whose logits equal
HF's; what has no GPT-2 form (rotary positions, tanh GELU, non-zero biases into a bias-free model) is refused in
one line; a LLaMA/Qwen3 config.json round-trips to the model it came from (their logits, both directions:
tests/hf/test_llama_layouts.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megarank.config.schema import ModelConfig
from megarank.errors import MegarankError
from megarank.hf.layouts import (GPT2, export_layout, from_hf_state, hf_config, import_layout, model_keys,
                                 nonzero_bias, to_hf_state)
from megarank.models.gpt import GPT

transformers = pytest.importorskip("transformers")

SMALL = dict(n_layers=2, d_model=32, n_heads=4, seq_len=16, vocab_size=128, attn_backend="math")


def _tokens(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 16), generator=torch.Generator().manual_seed(seed))


def _hf_model(config: dict, state: dict) -> torch.nn.Module:
    config = transformers.AutoConfig.for_model(**config)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    assert set(missing) <= tied and not unexpected, (missing, unexpected)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


@pytest.mark.parametrize("bias, tied", [(False, True), (True, False)])
def test_megarank_gpt_as_gpt2_gives_the_same_logits(bias, tied):
    torch.manual_seed(0)
    cfg = ModelConfig(**SMALL, bias=bias, tie_embeddings=tied)
    ours = GPT(cfg).eval()
    if bias:  # the init zeroes biases; make them count
        with torch.no_grad():
            for name, p in ours.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(std=0.1)
    assert export_layout(cfg) is GPT2
    theirs = _hf_model(hf_config(GPT2, cfg), to_hf_state(GPT2, cfg, ours.state_dict()))
    idx = _tokens(cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx), rtol=0, atol=1e-5)


@pytest.mark.parametrize("activation, mlp", [("gelu", "gelu"), ("gelu_new", "gelu_tanh")])
def test_gpt2_built_by_transformers_converts_to_the_same_logits(activation, mlp):
    """Both GELUs: the exact one, and OpenAI's tanh form ('gelu_new', GPT2Config's default) as model.mlp=gelu_tanh."""
    torch.manual_seed(1)
    config = transformers.GPT2Config(vocab_size=96, n_positions=24, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                                     activation_function=activation, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    theirs = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF initialises its biases to zero: make them count
        for name, p in theirs.named_parameters():
            if name.endswith(".bias"):
                p.normal_(std=0.1)
    hf = dict(theirs.state_dict())
    layout = import_layout(config.to_dict(), "test")
    keys = model_keys(layout, config.to_dict(), nonzero_bias=nonzero_bias(hf, layout))
    assert keys["bias"] and keys["d_ff"] == 48 and keys["max_positions"] == 24 and keys["vocab_size"] == 96
    assert keys["mlp"] == mlp
    cfg = ModelConfig(**{**keys, "seq_len": 16, "attn_backend": "math"})
    ours = GPT(cfg).eval()
    ours.load_state_dict(from_hf_state(layout, cfg, hf, "test"))
    idx = _tokens(96, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), theirs(idx).logits, rtol=0, atol=1e-5)


def test_round_trip_keeps_a_bias_free_model_bias_free():
    cfg = ModelConfig(**SMALL)
    state = GPT(cfg).state_dict()
    hf = to_hf_state(GPT2, cfg, state)
    assert not nonzero_bias(hf, GPT2)  # the zeros written for megarank's missing biases
    back = from_hf_state(GPT2, cfg, hf, "test")
    assert back.keys() == state.keys()
    for name in state:
        torch.testing.assert_close(back[name], state[name], rtol=0, atol=0)


def test_nonzero_bias_into_a_bias_free_model_is_refused():
    cfg = ModelConfig(**SMALL)
    hf = to_hf_state(GPT2, cfg, GPT(cfg).state_dict())
    hf["transformer.h.1.mlp.c_fc.bias"] = torch.ones_like(hf["transformer.h.1.mlp.c_fc.bias"])
    with pytest.raises(MegarankError, match="model.bias=true"):
        from_hf_state(GPT2, cfg, hf, "test")


def test_what_has_no_gpt2_form_is_refused_in_one_line():
    with pytest.raises(MegarankError, match="no GPT-2 form.*position=learned") as err:
        export_layout(ModelConfig(**{**SMALL, "position": "rotary"}))
    assert "\n" not in str(err.value)
    relu = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, activation_function="relu").to_dict()
    with pytest.raises(MegarankError, match="'relu'.*only 'gelu' or 'gelu_new'"):
        model_keys(GPT2, relu, nonzero_bias=False)
    with pytest.raises(MegarankError, match="reads the Hugging Face families gpt2, llama"):
        import_layout({"model_type": "bert"}, "somewhere")


def test_llama_config_round_trips_to_the_same_model_keys():
    """export's config.json read back by import gives the megarank model it came from (the logits of both
    directions: tests/hf/test_llama_layouts.py)."""
    for qk_norm in (False, True):
        cfg = ModelConfig(**{**SMALL, "max_positions": 16}, position="rotary", norm="rmsnorm", mlp="swiglu",
                          n_kv_heads=2, qk_norm=qk_norm, ffn_multiple=16, rope_base=5e5, norm_eps=1e-6,
                          tie_embeddings=not qk_norm)
        layout = export_layout(cfg)
        config = hf_config(layout, cfg)
        assert import_layout(config, "test") is layout
        back = ModelConfig(**{**model_keys(layout, config, nonzero_bias=False), "seq_len": 16,
                              "attn_backend": "math", "ffn_multiple": 16})
        assert back == dataclasses.replace(cfg, d_ff=cfg.ffn_dim)


def test_unread_hf_tensor_is_an_error():
    cfg = ModelConfig(**SMALL)
    hf = to_hf_state(GPT2, cfg, GPT(cfg).state_dict())
    hf["transformer.h.0.crossattention.c_attn.weight"] = torch.zeros(2)
    with pytest.raises(MegarankError, match="no place for 'transformer.h.0.crossattention"):
        from_hf_state(GPT2, dataclasses.replace(cfg), hf, "test")
