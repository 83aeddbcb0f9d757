"""megarank/hf/layouts.py's LLaMA-family entries against `transformers` as the reference, in fp32:

- export: a tiny megarank LLaMA (RMSNorm, SwiGLU at the ffn_multiple width rule, RoPE; GQA and multi-head; tied
  and untied heads; with and without biases), written as model.safetensors + config.json (the layout's tensors
  and hf_config) and loaded with AutoModelForCausalLM.from_pretrained, is LlamaForCausalLM (qk_norm=false) or
  Qwen3ForCausalLM (qk_norm=true) and gives megarank's logits within 1e-5; Qwen3's config.json carries the
  fields its own Qwen3Config would otherwise default (head_dim, rms_norm_eps, rope_theta, attention_bias) and
  its q_norm/k_norm are (d_head,) gains;
- import: a tiny LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (q/k/v biases: megarank's model.bias
  with zeros on o_proj and the MLP expresses them exactly) and Qwen3ForCausalLM built and saved by
  `transformers`, read through train.init_from's path (megarank/hf/init_from.py InitSource), gives a megarank
  GPT whose logits equal the HF model's within 1e-5;
- what megarank cannot express (sliding windows, scaled RoPE, a head_dim other than d_model / n_heads, Qwen3
  MLP biases on export) is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from megarank.config.schema import ExperimentConfig, ModelConfig
from megarank.errors import MegarankError
from megarank.hf.init_from import InitSource
from megarank.hf.layouts import LLAMA, QWEN3, export_layout, hf_config, import_layout, model_keys, to_hf_state
from megarank.models.gpt import GPT

transformers = pytest.importorskip("transformers")

LLAMA_SMALL = dict(n_layers=2, d_model=32, n_heads=4, seq_len=16, vocab_size=128, attn_backend="math",
                   position="rotary", norm="rmsnorm", mlp="swiglu", ffn_multiple=16, rope_base=5000.0,
                   norm_eps=1e-6)


def _tokens(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 16), generator=torch.Generator().manual_seed(seed))


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Norm gains of ones and biases of zeros would hide a misplaced tensor: make every one count."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name or name.split(".")[-2].startswith("ln_"):
                p.normal_(mean=1.0 if name.endswith("weight") else 0.0, std=0.1)


CASES = [  # qk_norm, n_kv_heads, tied, bias
    (False, 2, True, False), (False, 4, False, True), (False, 1, False, False), (True, 2, True, False),
    (True, None, False, False)]


@pytest.mark.parametrize("qk_norm, n_kv_heads, tied, bias", CASES,
                         ids=["llama-gqa-tied", "llama-mha-untied-bias", "llama-mqa-untied", "qwen3-gqa-tied",
                              "qwen3-mha-untied"])
def test_megarank_llama_exports_to_the_same_logits(qk_norm, n_kv_heads, tied, bias, tmp_path):
    cfg = ModelConfig(**LLAMA_SMALL, qk_norm=qk_norm, n_kv_heads=n_kv_heads, tie_embeddings=tied, bias=bias)
    assert cfg.ffn_dim == 96  # 2/3 · 4 · 32 rounded up to a multiple of 16
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    _perturb(ours, 1)
    layout = export_layout(cfg)
    assert layout is (QWEN3 if qk_norm else LLAMA)
    save_file(to_hf_state(layout, cfg, ours.state_dict()), str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(hf_config(layout, cfg)))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    assert type(theirs).__name__ == layout.architecture
    assert theirs.config.num_key_value_heads == cfg.kv_heads and theirs.config.intermediate_size == 96
    if tied:
        assert theirs.lm_head.weight.data_ptr() == theirs.model.embed_tokens.weight.data_ptr()
    idx = _tokens(cfg.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx), rtol=0, atol=1e-5)


def test_qwen3_config_carries_what_qwen3config_would_default():
    """Qwen3Config defaults head_dim=128, rms_norm_eps=1e-6 and rope_theta=10000: the export must set each."""
    cfg = ModelConfig(**{**LLAMA_SMALL, "norm_eps": 1e-5, "rope_base": 500000.0}, qk_norm=True, n_kv_heads=2)
    config = transformers.Qwen3Config(**hf_config(QWEN3, cfg))
    assert (config.head_dim, config.rms_norm_eps, config.attention_bias) == (8, 1e-5, False)
    assert config.rope_parameters["rope_theta"] == 500000.0 and config.rope_parameters["rope_type"] == "default"
    assert config.sliding_window is None and set(config.layer_types) == {"full_attention"}
    state = to_hf_state(QWEN3, cfg, GPT(cfg).state_dict())
    assert state["model.layers.0.self_attn.q_norm.weight"].shape == (cfg.d_head,)
    assert state["model.layers.1.self_attn.k_norm.weight"].shape == (cfg.d_head,)


def test_qwen3_export_with_biases_is_refused():
    """Qwen3's MLP has no biases (attention_bias covers q/k/v/o only): model.bias=true has no Qwen3 form."""
    with pytest.raises(MegarankError, match="Qwen3.*MLP.*bias") as err:
        export_layout(ModelConfig(**LLAMA_SMALL, qk_norm=True, bias=True))
    assert "\n" not in str(err.value)


IMPORTS = {  # model_type: (config class, model class, extra config)
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
}


def _save_hf(model_type: str, path, *, tied: bool, seed: int) -> torch.nn.Module:
    config_cls, model_cls, extra = IMPORTS[model_type]
    config = getattr(transformers, config_cls)(
        vocab_size=96, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5, tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 20000.0}, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    _perturb(model, seed + 1)
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("model_type, tied", [("llama", False), ("llama", True), ("mistral", False),
                                              ("qwen2", False), ("qwen3", True)])
def test_hf_llama_family_imports_to_the_same_logits(model_type, tied, tmp_path):
    theirs = _save_hf(model_type, tmp_path, tied=tied, seed=3)
    source = InitSource.open(tmp_path)  # train.init_from's path
    cfg = source.configure(ExperimentConfig(model=ModelConfig(seq_len=16, attn_backend="math"))).model
    assert (cfg.norm, cfg.mlp, cfg.position, cfg.n_kv_heads, cfg.d_ff) == ("rmsnorm", "swiglu", "rotary", 2, 72)
    assert cfg.qk_norm == (model_type == "qwen3") and cfg.bias == (model_type == "qwen2")
    assert cfg.rope_base == 20000.0 and cfg.norm_eps == 1e-5 and cfg.tie_embeddings == tied
    ours = GPT(cfg).eval()
    ours.load_state_dict(source.read_weights(cfg))
    idx = _tokens(96, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), theirs(idx).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("change, match", [
    ({"model_type": "mistral", "sliding_window": 8}, "sliding-window"),
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8}, "sliding-window"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "scales RoPE"),
    # Llama 3.1's config.json (saved before transformers 5): rope_scaling beside an unscaled rope_parameters
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}}, r"scales RoPE \('llama3'\)"),
    ({"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 4.0}}, r"scales RoPE \('linear'\)"),
    ({"head_dim": 16}, "head_dim=16"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
])
def test_what_megarank_cannot_express_is_refused_in_one_line(change, match):
    config = {**transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, vocab_size=64).to_dict(), **change}
    with pytest.raises(MegarankError, match=match) as err:
        model_keys(import_layout(config, "test"), config, nonzero_bias=False)
    assert "\n" not in str(err.value)


def test_qwen_window_left_off_is_read():
    """Qwen2/Qwen3 config.json keep sliding_window=4096 with use_sliding_window=false: full attention."""
    config = {**transformers.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=64).to_dict(),
              "sliding_window": 4096, "use_sliding_window": False}
    assert model_keys(import_layout(config, "test"), config, nonzero_bias=True)["n_kv_heads"] == 2
