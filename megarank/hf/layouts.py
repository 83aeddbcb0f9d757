"""The map between megarank's GPT and a Hugging Face family: tensor names, layouts and config.json, one table per
family. Export (megarank -> HF) and import (HF -> megarank, for train.init_from) read the same tables. The
attention tensors' names come from megarank/hf/names.py ATTENTION, which megarank-rank's reader reads too.

A family is an HFLayout: its global tensor rules, its per-layer rules ('{i}' is the layer), and its config
translation both ways. A rule names one HF tensor and the megarank tensor(s) it holds:
    copy    the same tensor (nn.Linear's (out, in) layout on both sides)
    conv1d  HF's Conv1D keeps (in, out): nn.Linear's weight transposed (GPT-2); a 1-D bias is the same
Several megarank tensors on one rule are concatenated on their dim 0 (output features) into the one HF tensor
(GPT-2's fused c_attn = [q; k; v]) and split back by the megarank model's own shapes, so a fused layout with
grouped K/V heads needs no other code.

Biases: where megarank has none (model.bias=false) and the HF family always has them (GPT-2), export writes
zeros; import into a bias-free model takes only all-zero HF biases, and a family whose biases are non-zero
imports as model.bias=true (model_keys says which). An HF bias the family lacks where megarank has one (Qwen2
has none on o_proj and the MLP) imports as zeros.

Families:
    gpt2   GPT2LMHeadModel: megarank's GPT with learned positions (model.mlp gelu <-> 'gelu', gelu_tanh <->
           'gelu_new', OpenAI's).
           Tested both ways (tests/hf/).
    llama, qwen3 (export, keyed on qk_norm), llama / mistral / qwen2 / qwen3 (import): megarank's GPT with
           rotary positions and the LLaMA options model.norm=rmsnorm, model.mlp=swiglu (mlp.gate_proj/up_proj/
           down_proj), model.n_kv_heads and model.qk_norm (attn.q_norm/k_norm, Qwen3's (d_head,) gains). Tested
           both ways against transformers (tests/hf/test_llama_layouts.py): export to LlamaForCausalLM and
           Qwen3ForCausalLM (GQA and multi-head, tied and untied, LLaMA with biases), import from
           LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (its q/k/v biases: model.bias=true with zero
           o_proj and MLP biases, exact) and Qwen3ForCausalLM. Refused in one line: sliding-window attention,
           scaled RoPE, head_dim != d_model / n_heads, a non-SiLU MLP, and Qwen3 export with model.bias=true
           (Qwen3's MLP has no biases).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from megarank.config.schema import ModelConfig
from megarank.errors import MegarankError
from megarank.hf.names import ATTENTION

BOS_ID, EOS_ID = 1, 2  # megarank/data/tokenizer.py's (not imported: that pulls in sentencepiece)


@dataclass(frozen=True)
class TensorRule:
    """One HF tensor and the megarank tensor(s) it holds."""

    hf: str
    """HF name; '{i}' is the layer in per-layer rules."""
    ours: tuple[str, ...]
    """megarank name(s), concatenated on dim 0 in this order when more than one."""
    kind: str = "copy"
    """'copy' or 'conv1d' (HF keeps the weight as (in, out))."""


@dataclass(frozen=True)
class HFLayout:
    """One HF family: its tensors and its config.json."""

    name: str
    """The family's model_type in config.json ('gpt2', 'llama', ...)."""
    architecture: str
    """The class AutoModelForCausalLM builds ('GPT2LMHeadModel', ...)."""
    global_rules: tuple[TensorRule, ...]
    layer_rules: tuple[TensorRule, ...]
    head: TensorRule
    """The LM head: written only when megarank's head is untied (tie_word_embeddings=false)."""
    config_to_hf: Callable[[ModelConfig], dict]
    """config.json's family keys for a megarank ModelConfig."""
    config_from_hf: Callable[[dict], dict]
    """megarank model keys for an HF config.json (without 'bias', which the tensors decide)."""
    ignored: tuple[str, ...] = ()
    """Regexes of HF tensors that are not weights (GPT-2's causal-mask buffers in older files)."""

    def rules(self, cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], str]]:
        """(HF name, megarank names, kind) of every tensor, layers expanded; the head only where untied."""
        rules = [*self.global_rules] + ([] if cfg.tie_embeddings else [self.head])
        out = [(r.hf, r.ours, r.kind) for r in rules]
        for i in range(cfg.n_layers):
            out += [(r.hf.format(i=i), tuple(n.format(i=i) for n in r.ours), r.kind) for r in self.layer_rules]
        return out


# --- GPT-2 ----------------------------------------------------------------------------------------------------

# megarank's model.mlp <-> GPT-2's activation_function: the exact erf GELU, and the tanh form OpenAI trained with
GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}


def _gpt2_config(cfg: ModelConfig) -> dict:
    return {"n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.ffn_dim,
            "n_positions": cfg.max_positions or cfg.seq_len, "activation_function": GPT2_ACTIVATIONS[cfg.mlp],
            "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout, "initializer_range": cfg.init_std, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}


def _gpt2_model_keys(hf: dict) -> dict:
    activation = hf.get("activation_function", "gelu_new")  # GPT2Config's default
    mlp = {hf_name: ours for ours, hf_name in GPT2_ACTIVATIONS.items()}.get(activation)
    if mlp is None:
        raise MegarankError(f"this GPT-2 uses activation_function='{activation}'; megarank's MLP converts exactly "
                            f"only {' or '.join(repr(a) for a in GPT2_ACTIVATIONS.values())}")
    for key, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                        ("add_cross_attention", False)):
        if hf.get(key, wanted) != wanted:
            raise MegarankError(f"this GPT-2 has {key}={hf[key]}; megarank's attention matches GPT-2 only with "
                                f"{key}={wanted}")
    n_embd = _int(hf, "n_embd")
    n_inner = hf.get("n_inner")
    return {"family": "gpt", "n_layers": _int(hf, "n_layer"), "d_model": n_embd, "n_heads": _int(hf, "n_head"),
            "d_ff": int(n_inner) if n_inner is not None else 4 * n_embd, "max_positions": _int(hf, "n_positions"),
            "vocab_size": _int(hf, "vocab_size"), "position": "learned", "norm": "layernorm", "mlp": mlp,
            "n_kv_heads": None, "qk_norm": False, "norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
            "tie_embeddings": bool(hf.get("tie_word_embeddings", True))}


_GPT2_ATTN = ATTENTION["gpt2"]
_GPT2_KIND = "conv1d" if _GPT2_ATTN.conv1d else "copy"  # GPT-2 keeps every Conv1D (attention and MLP) as (in, out)

GPT2 = HFLayout(
    name="gpt2", architecture="GPT2LMHeadModel",
    global_rules=(TensorRule("transformer.wte.weight", ("wte.weight",)),
                  TensorRule("transformer.wpe.weight", ("wpe.weight",)),
                  TensorRule("transformer.ln_f.weight", ("ln_f.weight",)),
                  TensorRule("transformer.ln_f.bias", ("ln_f.bias",))),
    layer_rules=tuple(
        [TensorRule(f"transformer.h.{{i}}.{hf}.{p}", (f"blocks.{{i}}.{ours}.{p}",)) for hf, ours in
         (("ln_1", "ln_1"), ("ln_2", "ln_2")) for p in ("weight", "bias")]
        + [TensorRule(_GPT2_ATTN.name("qkv", prefix="transformer.", param=p),
                      tuple(f"blocks.{{i}}.attn.{r}_proj.{p}" for r in "qkv"), _GPT2_KIND) for p in ("weight", "bias")]
        + [TensorRule(_GPT2_ATTN.name("o", prefix="transformer.", param=p), (f"blocks.{{i}}.attn.o_proj.{p}",),
                      _GPT2_KIND) for p in ("weight", "bias")]
        + [TensorRule(f"transformer.h.{{i}}.{hf}.{p}", (f"blocks.{{i}}.{ours}.{p}",), _GPT2_KIND)
           for hf, ours in (("mlp.c_fc", "mlp.fc_in"), ("mlp.c_proj", "mlp.fc_out")) for p in ("weight", "bias")]),
    head=TensorRule("lm_head.weight", ("lm_head.weight",)),
    config_to_hf=_gpt2_config, config_from_hf=_gpt2_model_keys,
    ignored=(rf"transformer\.{_GPT2_ATTN.layer_regex(capture=False)}(masked_)?bias",))


# --- LLaMA family: model.norm=rmsnorm, mlp=swiglu, position=rotary, n_kv_heads, qk_norm -------------------------

LLAMA_OPTIONS = ("norm", "mlp", "n_kv_heads", "qk_norm")
"""The ModelConfig keys of the LLaMA options (a megarank source of train.init_from fixes them)."""


def _llama_config(cfg: ModelConfig) -> dict:
    return {"hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.d_head, "intermediate_size": cfg.ffn_dim,
            "max_position_embeddings": cfg.max_positions or cfg.seq_len, "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
            "hidden_act": "silu", "attention_bias": cfg.bias, "mlp_bias": cfg.bias,
            "attention_dropout": cfg.dropout, "initializer_range": cfg.init_std}


def _llama_model_keys(hf: dict) -> dict:
    if hf.get("hidden_act", "silu") != "silu":
        raise MegarankError(f"this {hf.get('model_type')} uses hidden_act='{hf['hidden_act']}'; megarank's SwiGLU "
                            "MLP is SiLU-gated ('silu')")
    # Qwen2/Qwen3 keep sliding_window beside use_sliding_window=false (off); Mistral's is on when set
    window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
    layer_types = set(hf.get("layer_types") or ()) - {"full_attention"}
    if window is not None or layer_types:
        raise MegarankError(f"this {hf.get('model_type')} uses sliding-window attention "
                            f"(sliding_window={window}, layer_types {sorted(layer_types)}); megarank's attention is "
                            "full causal")
    # transformers 5 writes rope_parameters; older files (Llama 3.1's among them) rope_scaling, whose oldest form
    # names the scaling 'type': a scaling in either refuses
    ropes = [r for r in (hf.get("rope_parameters"), hf.get("rope_scaling")) if isinstance(r, dict)]
    scaled = [kind for kind in (r.get("rope_type", r.get("type")) for r in ropes) if kind not in (None, "default")]
    if scaled:
        raise MegarankError(f"this {hf.get('model_type')} scales RoPE ('{scaled[0]}'); megarank's RoPE is the "
                            "default one")
    rope = ropes[0] if ropes else {}
    d_model, n_heads = _int(hf, "hidden_size"), _int(hf, "num_attention_heads")
    if hf.get("head_dim") not in (None, d_model // n_heads):
        raise MegarankError(f"this {hf.get('model_type')} has head_dim={hf['head_dim']} != hidden_size / "
                            f"num_attention_heads = {d_model // n_heads}; megarank's heads are d_model / n_heads")
    return {"family": "gpt", "n_layers": _int(hf, "num_hidden_layers"), "d_model": d_model, "n_heads": n_heads,
            "n_kv_heads": int(hf.get("num_key_value_heads") or n_heads), "d_ff": _int(hf, "intermediate_size"),
            "max_positions": _int(hf, "max_position_embeddings"), "vocab_size": _int(hf, "vocab_size"),
            "position": "rotary", "rope_base": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            "norm_eps": float(hf.get("rms_norm_eps", 1e-6)), "norm": "rmsnorm", "mlp": "swiglu",
            "qk_norm": hf.get("model_type") == "qwen3",
            "tie_embeddings": bool(hf.get("tie_word_embeddings", False))}


def _llama_layout(name: str, architecture: str, *, qk_norm: bool) -> HFLayout:
    names = ATTENTION["llama"]
    attn = [TensorRule(names.name(r, prefix="model.", param=p), (f"blocks.{{i}}.attn.{r}_proj.{p}",))
            for r in "qkvo" for p in ("weight", "bias")]
    norms = [TensorRule(names.name(norm, prefix="model."), (f"blocks.{{i}}.attn.{r}_norm.weight",))
             for r, norm in zip("qk", names.qk_norm)] if qk_norm else []
    mlp = [TensorRule(f"model.layers.{{i}}.mlp.{r}_proj.{p}", (f"blocks.{{i}}.mlp.{r}_proj.{p}",))
           for r in ("gate", "up", "down") for p in ("weight", "bias")]
    return HFLayout(
        name=name, architecture=architecture,
        global_rules=(TensorRule("model.embed_tokens.weight", ("wte.weight",)),
                      TensorRule("model.norm.weight", ("ln_f.weight",))),
        layer_rules=(TensorRule("model.layers.{i}.input_layernorm.weight", ("blocks.{i}.ln_1.weight",)),
                     TensorRule("model.layers.{i}.post_attention_layernorm.weight", ("blocks.{i}.ln_2.weight",)),
                     *attn, *norms, *mlp),
        head=TensorRule("lm_head.weight", ("lm_head.weight",)),
        config_to_hf=_llama_config, config_from_hf=_llama_model_keys,
        ignored=(rf"model\.{names.layer_regex(capture=False)}rotary_emb\.inv_freq",))


LLAMA = _llama_layout("llama", "LlamaForCausalLM", qk_norm=False)
QWEN3 = _llama_layout("qwen3", "Qwen3ForCausalLM", qk_norm=True)
IMPORTS: dict[str, HFLayout] = {"gpt2": GPT2, "llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "qwen3": QWEN3}
"""HF model_type -> the layout that reads it (Mistral and Qwen2 share LLaMA's names)."""


# --- choosing a layout ----------------------------------------------------------------------------------------

def is_llama_style(cfg: ModelConfig) -> bool:
    """Whether cfg uses any LLaMA option."""
    return cfg.norm != "layernorm" or cfg.mlp == "swiglu" or cfg.kv_heads != cfg.n_heads or cfg.qk_norm


def export_layout(cfg: ModelConfig) -> HFLayout:
    """The HF family a megarank GPT exports as; one line where it has none."""
    if cfg.family != "gpt":
        raise MegarankError(f"a {cfg.family} has no Hugging Face causal-LM form; megarank-export writes GPTs")
    if is_llama_style(cfg):
        if cfg.norm != "rmsnorm" or cfg.mlp != "swiglu" or cfg.position != "rotary":
            raise MegarankError("a LLaMA-style megarank GPT exports as Llama/Qwen3 only with model.norm=rmsnorm, "
                                "model.mlp=swiglu and model.position=rotary")
        if cfg.qk_norm and cfg.bias:
            raise MegarankError("a megarank GPT with model.qk_norm=true exports as Qwen3, whose MLP has no biases "
                                "(attention_bias covers q/k/v/o only); export it with model.bias=false")
        return QWEN3 if cfg.qk_norm else LLAMA
    if cfg.position != "learned":
        raise MegarankError(f"a megarank GPT with model.position={cfg.position} has no GPT-2 form; megarank-export "
                            "writes GPT-2 (position=learned, layernorm, gelu) and Llama/Qwen3 (rotary, rmsnorm, "
                            "swiglu)")
    return GPT2


def import_layout(hf_config: dict, where: str) -> HFLayout:
    """The layout reading an HF config.json; one line naming the families read where it is none of them."""
    model_type = hf_config.get("model_type")
    if model_type not in IMPORTS:
        raise MegarankError(f"'{where}' is a '{model_type}' model; train.init_from reads the Hugging Face families "
                            f"{', '.join(IMPORTS)}")
    return IMPORTS[model_type]


def hf_config(layout: HFLayout, cfg: ModelConfig) -> dict:
    """The export's config.json."""
    return {"architectures": [layout.architecture], "model_type": layout.name, "vocab_size": cfg.vocab_size,
            **layout.config_to_hf(cfg), "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID, "dtype": "float32", "use_cache": True}


def model_keys(layout: HFLayout, hf: dict, *, nonzero_bias: bool) -> dict:
    """The megarank model keys an HF config.json gives (bias: whether any HF bias is non-zero)."""
    return {**layout.config_from_hf(hf), "bias": nonzero_bias}


def _int(hf: dict, key: str) -> int:
    try:
        return int(hf[key])
    except (KeyError, TypeError, ValueError):
        raise MegarankError(f"the Hugging Face config.json has no valid '{key}'") from None


# --- the tensors ----------------------------------------------------------------------------------------------

def megarank_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """{name: shape} of every state-dict entry of megarank's GPT for cfg (a tied head included), built on the
    meta device: nothing is allocated."""
    from megarank.models.gpt import GPT

    with torch.device("meta"):
        model = GPT(cfg)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def _shapes_with_biases(cfg: ModelConfig) -> dict[str, torch.Size]:
    """The shapes of cfg's GPT with biases: what a zero bias fills in for."""
    return megarank_shapes(dataclasses.replace(cfg, bias=True))


def to_hf_state(layout: HFLayout, cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The HF tensors of megarank's state dict `state` (every parameter; a tied head may be present): each its
    own contiguous storage (safetensors refuses shared ones), zeros for the biases megarank lacks."""
    full = _shapes_with_biases(cfg)
    dtype = state["wte.weight"].dtype
    out, used = {}, set()
    for hf_name, ours, kind in layout.rules(cfg):
        parts = []
        for name in ours:
            if name in state:
                parts.append(state[name])
                used.add(name)
            elif name.endswith(".bias") and name in full:
                parts.append(torch.zeros(full[name], dtype=dtype))
            else:
                raise MegarankError(f"the checkpoint has no tensor '{name}' for the {layout.name} tensor '{hf_name}'")
        tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        out[hf_name] = (tensor.t() if kind == "conv1d" else tensor).contiguous().clone()
    tied = {"lm_head.weight"} if cfg.tie_embeddings else set()
    left = set(state) - used - tied
    if left:  # a parameter no rule carries would be silently lost
        raise MegarankError(f"no {layout.name} tensor holds megarank's '{sorted(left)[0]}' (megarank/hf/layouts.py)")
    return out


def from_hf_state(layout: HFLayout, cfg: ModelConfig, hf: Mapping[str, torch.Tensor], where: str
                  ) -> dict[str, torch.Tensor]:
    """megarank's state dict (every parameter, a tied head included) from the HF tensors `hf`, for the GPT of
    cfg; each shape checked, every HF tensor accounted for."""
    shapes, full = megarank_shapes(cfg), _shapes_with_biases(cfg)
    out, used = {}, set()
    for hf_name, ours, kind in layout.rules(cfg):
        if hf_name not in hf:
            if all(name.endswith(".bias") for name in ours):  # a family without this bias (GPT-2 never)
                out.update({name: torch.zeros(shapes[name]) for name in ours if name in shapes})
                continue
            raise MegarankError(f"'{where}' has no tensor '{hf_name}': not a complete {layout.name} checkpoint")
        used.add(hf_name)
        tensor = hf[hf_name].t() if kind == "conv1d" else hf[hf_name]
        widths = [full[name][0] for name in ours]
        if tensor.shape[0] != sum(widths):
            raise MegarankError(f"'{where}': '{hf_name}' has shape {tuple(hf[hf_name].shape)}, which its config.json "
                                "does not give")
        for name, piece in zip(ours, torch.split(tensor, widths, dim=0)):
            if name in shapes:
                if piece.shape != shapes[name]:
                    raise MegarankError(f"'{where}': '{hf_name}' gives '{name}' shape {tuple(piece.shape)}, its "
                                        f"config.json {tuple(shapes[name])}")
                out[name] = piece.contiguous()
            elif bool(piece.any()):
                raise MegarankError(f"'{where}': '{hf_name}' is non-zero but model.bias=false; import it with "
                                    "model.bias=true")
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["wte.weight"]
    ignored = [re.compile(pattern) for pattern in layout.ignored]
    left = [name for name in hf if name not in used and not any(p.fullmatch(name) for p in ignored)
            and not (cfg.tie_embeddings and name == layout.head.hf)]
    if left:
        raise MegarankError(f"'{where}': megarank's GPT has no place for '{left[0]}' ({len(left)} tensors unread); "
                            f"not the {layout.name} layout megarank reads")
    return out


def nonzero_bias(hf: Mapping[str, torch.Tensor], layout: HFLayout) -> bool:
    """Whether any of the HF tensors' biases (the ignored buffers aside) is non-zero."""
    ignored = [re.compile(pattern) for pattern in layout.ignored]
    return any(bool(t.any()) for name, t in hf.items()
               if name.endswith(".bias") and not any(p.fullmatch(name) for p in ignored))
