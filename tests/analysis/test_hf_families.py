"""The safetensors reader on every Hugging Face family it reads, against a direct computation: a tiny random model
of each family is built with `transformers` and saved with save_pretrained (nothing downloaded). Per layer and
head, the test splits the module's own torch weights into W_Q,h, W_K,h, W_V,h, W_O,h by that family's definition
(transformers' modeling_<family>.py: GPT-2's Conv1D c_attn in (in, out) layout, GPT-NeoX's [q, k, v] per head,
Falcon's per-K/V-group [q.., k, v] in its three forms, Phi-3's [all q; all k; all v], ...), forms W_Q,hᵀW_K,h and
W_O,h W_V,h, takes torch.linalg.svdvals, and compares with megarank-rank's singular values (1e-6 of σ_max, in
float64). Layer 0's attention output computed from the reader's split (q, k, v, o) is compared with the module's
own forward (float64 but for the softmax, identity RoPE, biases zeroed), which catches any interleaving mistake
the spectra miss. Also: head counts read from each family's config names (Falcon's multi_query), or --n-heads
without config.json; and the note megarank-rank prints when Qwen3's q/k norms sit between the factors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
import transformers  # a declared test dependency (setup.py extras 'dev')

from megarank.analysis.cli import main
from megarank.analysis.readers import open_source
from megarank.analysis.report import analyse
from megarank.errors import MegarankError

T = transformers
SMALL = dict(vocab_size=64, num_hidden_layers=2)
LLAMA_LIKE = dict(SMALL, hidden_size=32, intermediate_size=64, num_attention_heads=4)


def rows(w: torch.Tensor, start: int, d_head: int) -> torch.Tensor:
    return w[start * d_head:(start + 1) * d_head]


def split_separate(attn, n: int, kv: int, d: int, o_name: str = "o_proj"):
    """LLaMA-style q/k/v_proj and o_proj (OPT: out_proj): head h reads K/V head h // (n / kv)."""
    q, k, v, o = (getattr(attn, name).weight for name in ("q_proj", "k_proj", "v_proj", o_name))
    g = n // kv
    return [(rows(q, h, d), rows(k, h // g, d), rows(v, h // g, d), rows(o.T, h, d).T) for h in range(n)]


def split_gpt2(attn, n: int, kv: int, d: int):
    """GPT2Attention: c_attn(x) = x @ W (Conv1D, W (d_model, 3·d_model)), split into q | k | v along the output."""
    w, o, d_model = attn.c_attn.weight, attn.c_proj.weight, attn.c_attn.weight.shape[0]
    return [(w[:, h * d:(h + 1) * d].T, w[:, d_model + h * d:d_model + (h + 1) * d].T,
             w[:, 2 * d_model + h * d:2 * d_model + (h + 1) * d].T, o[h * d:(h + 1) * d].T) for h in range(n)]


def split_neox(attn, n: int, kv: int, d: int):
    """GPTNeoXAttention: qkv viewed (.., n, 3·d_head), chunked into q, k, v: rows [h0 q, k, v][h1 q, k, v]..."""
    w, o = attn.query_key_value.weight, attn.dense.weight
    return [(rows(w, 3 * h, d), rows(w, 3 * h + 1, d), rows(w, 3 * h + 2, d), rows(o.T, h, d).T) for h in range(n)]


def split_falcon(attn, n: int, kv: int, d: int):
    """FalconAttention._split_heads: new_decoder_architecture views (.., n_kv, n/n_kv + 2, d_head) (q.., k, v per
    group); multi_query views (.., n + 2, d_head) (all q, one k, one v); else (.., n, 3, d_head) ([q, k, v] per
    head)."""
    w, o = attn.query_key_value.weight, attn.dense.weight
    out = []
    for h in range(n):
        if attn.new_decoder_architecture:
            r = n // kv
            base = (h // r) * (r + 2)
            q, k, v = rows(w, base + h % r, d), rows(w, base + r, d), rows(w, base + r + 1, d)
        elif attn.multi_query:
            q, k, v = rows(w, h, d), rows(w, n, d), rows(w, n + 1, d)
        else:
            q, k, v = rows(w, 3 * h, d), rows(w, 3 * h + 1, d), rows(w, 3 * h + 2, d)
        out.append((q, k, v, rows(o.T, h, d).T))
    return out


def split_phi3(attn, n: int, kv: int, d: int):
    """Phi3Attention: qkv[..., :n·d_head] is q, the next n_kv·d_head k, the rest v."""
    w, o, g = attn.qkv_proj.weight, attn.o_proj.weight, n // kv
    return [(rows(w, h, d), rows(w, n + h // g, d), rows(w, n + kv + h // g, d), rows(o.T, h, d).T) for h in range(n)]


def split_bert(attn, n: int, kv: int, d: int):
    q, k, v, o = attn.self.query.weight, attn.self.key.weight, attn.self.value.weight, attn.output.dense.weight
    return [(rows(q, h, d), rows(k, h, d), rows(v, h, d), rows(o.T, h, d).T) for h in range(n)]


@dataclass(frozen=True)
class Family:
    """A tiny model of one family: how to build it, where its attention modules are, how transformers splits them."""

    build: Callable[[], torch.nn.Module]
    attention: Callable[[torch.nn.Module], list]  # the attention modules, layer by layer
    split: Callable  # (module, n, n_kv, d_head) -> per head (W_Q,h, W_K,h, W_V,h, W_O,h)
    geometry: tuple[str, int, int, int, int]  # family, n_heads, n_kv_heads, d_head, d_model
    forward: str = "rope"  # how the module is called: 'rope' (position_embeddings), 'plain', 'falcon', 'bert'
    qk_norm: bool = False


def causal_lm(config_class, model_class, **kw):
    def build():
        torch.manual_seed(0)
        config = config_class(**kw)
        config._attn_implementation = "eager"
        return model_class(config).eval()
    return build


FAMILIES = {
    "gpt2": Family(causal_lm(T.GPT2Config, T.GPT2LMHeadModel, vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                             n_positions=16),
                   lambda m: [b.attn for b in m.transformer.h], split_gpt2, ("gpt2", 4, 4, 8, 32), "plain"),
    "gpt_neox": Family(causal_lm(T.GPTNeoXConfig, T.GPTNeoXForCausalLM, **LLAMA_LIKE),
                       lambda m: [b.attention for b in m.gpt_neox.layers], split_neox, ("gpt_neox", 4, 4, 8, 32)),
    "opt": Family(causal_lm(T.OPTConfig, T.OPTForCausalLM, **SMALL, hidden_size=32, ffn_dim=64,
                            num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=32),
                  lambda m: [b.self_attn for b in m.model.decoder.layers],
                  lambda a, n, kv, d: split_separate(a, n, kv, d, "out_proj"), ("opt", 4, 4, 8, 32), "plain"),
    "falcon_multi_query": Family(
        causal_lm(T.FalconConfig, T.FalconForCausalLM, **SMALL, hidden_size=32, num_attention_heads=4,
                  multi_query=True, new_decoder_architecture=False),
        lambda m: [b.self_attention for b in m.transformer.h], split_falcon, ("falcon", 4, 1, 8, 32), "falcon"),
    "falcon_new_decoder_gqa": Family(
        causal_lm(T.FalconConfig, T.FalconForCausalLM, **SMALL, hidden_size=32, num_attention_heads=4,
                  new_decoder_architecture=True, num_kv_heads=2),
        lambda m: [b.self_attention for b in m.transformer.h], split_falcon, ("falcon", 4, 2, 8, 32), "falcon"),
    "falcon_per_head": Family(
        causal_lm(T.FalconConfig, T.FalconForCausalLM, **SMALL, hidden_size=32, num_attention_heads=4,
                  multi_query=False, new_decoder_architecture=False),
        lambda m: [b.self_attention for b in m.transformer.h], split_falcon, ("falcon", 4, 4, 8, 32), "falcon"),
    "phi3": Family(causal_lm(T.Phi3Config, T.Phi3ForCausalLM, **LLAMA_LIKE, num_key_value_heads=2, pad_token_id=0),
                   lambda m: [b.self_attn for b in m.model.layers], split_phi3, ("phi3", 4, 2, 8, 32)),
    "qwen3": Family(causal_lm(T.Qwen3Config, T.Qwen3ForCausalLM, **LLAMA_LIKE, num_key_value_heads=2, head_dim=8),
                    lambda m: [b.self_attn for b in m.model.layers], split_separate, ("qwen3", 4, 2, 8, 32),
                    qk_norm=True),
    "gemma": Family(causal_lm(T.GemmaConfig, T.GemmaForCausalLM, **LLAMA_LIKE, num_key_value_heads=1, head_dim=16),
                    lambda m: [b.self_attn for b in m.model.layers], split_separate, ("gemma", 4, 1, 16, 32)),
    "llama": Family(causal_lm(T.LlamaConfig, T.LlamaForCausalLM, **LLAMA_LIKE, num_key_value_heads=2),
                    lambda m: [b.self_attn for b in m.model.layers], split_separate, ("llama", 4, 2, 8, 32)),
    "mistral": Family(causal_lm(T.MistralConfig, T.MistralForCausalLM, **LLAMA_LIKE, num_key_value_heads=1),
                      lambda m: [b.self_attn for b in m.model.layers], split_separate, ("mistral", 4, 1, 8, 32)),
    "qwen2": Family(causal_lm(T.Qwen2Config, T.Qwen2ForCausalLM, **LLAMA_LIKE, num_key_value_heads=2),
                    lambda m: [b.self_attn for b in m.model.layers], split_separate, ("qwen2", 4, 2, 8, 32)),
    "bert": Family(causal_lm(T.BertConfig, T.BertModel, **SMALL, hidden_size=48, num_attention_heads=6,
                             intermediate_size=64, max_position_embeddings=32),
                   lambda m: [b.attention for b in m.encoder.layer], split_bert, ("bert", 6, 6, 8, 48), "bert"),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def saved(request, tmp_path_factory):
    """(family, model, directory): the tiny model, its q/k norms randomised so they matter, saved."""
    family = FAMILIES[request.param]
    model = family.build()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(torch.rand_like(p) + 0.5)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path, safe_serialization=True)
    return family, model, path


def direct_sv(family: Family, model, d_head: int) -> dict[str, np.ndarray]:
    """product -> (n_layers, n_heads, d_head): svdvals of the formed products of transformers' own split."""
    _, n, kv, d, _ = family.geometry
    out = {"qk": [], "ov": []}
    for attn in family.attention(model):
        heads = [tuple(w.detach().double() for w in head) for head in family.split(attn, n, kv, d)]
        out["qk"].append([torch.linalg.svdvals(q.T @ k)[:d_head].numpy() for q, k, _, _ in heads])
        out["ov"].append([torch.linalg.svdvals(o @ v)[:d_head].numpy() for _, _, v, o in heads])
    return {p: np.array(v) for p, v in out.items()}


def test_spectra_match_the_products_formed_from_transformers_weights(saved):
    family, model, path = saved
    with open_source(path) as source:
        table = analyse(source, rtol=1e-2, atol=1e-3, progress=False)
    info = table.info
    name, n, kv, d, d_model = family.geometry
    assert (info.family, info.n_layers, info.n_heads, info.n_kv_heads, info.d_head, info.d_model) == (
        name, 2, n, kv, d, d_model)
    expected = direct_sv(family, model, d)
    for product in ("qk", "ov"):
        sigma_max = expected[product][..., :1]
        assert np.all(np.abs(table.sv[product] - expected[product]) <= 1e-6 * sigma_max), product
    assert ("qk_norm" in info.details) == family.qk_norm
    if family.qk_norm:
        assert "raw weights" in info.details["qk_norm"] and info.details["qk_norm"].startswith("q_norm/k_norm")


def reference_attention(x, q, k, v, o, n: int, kv: int, d: int, scale: float, mask, q_norm=None, k_norm=None):
    """softmax(Q_h K_gᵀ·scale + mask) V_g, heads concatenated, through o: from (q, k, v, o) in nn.Linear layout."""
    b, t, _ = x.shape
    heads = [(x @ w.T).view(b, t, m, d).transpose(1, 2) for w, m in ((q, n), (k, kv), (v, kv))]
    if q_norm is not None:
        heads[0], heads[1] = q_norm(heads[0]), k_norm(heads[1])
    qh, kh, vh = heads[0], *(h.repeat_interleave(n // kv, dim=1) for h in heads[1:])
    weights = torch.softmax(qh @ kh.transpose(-1, -2) * scale + mask, dim=-1)
    return (weights @ vh).transpose(1, 2).reshape(b, t, n * d) @ o.T


def test_the_readers_split_reproduces_the_modules_forward(saved):
    family, model, path = saved
    _, n, kv, d, d_model = family.geometry
    model = model.double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    with open_source(path) as source:
        shard = next(iter(source.layers()))[0]
    q, k, v, o = (w.double() for w in (shard.q, shard.k, shard.v, shard.o))
    attn = family.attention(model)[0]
    t = 5
    x = torch.randn(2, t, d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = torch.full((t, t), torch.finfo(torch.float64).min, dtype=torch.float64).triu(1)[None, None]
    identity_rope = (torch.ones(1, t, getattr(attn, "rotary_ndims", d), dtype=torch.float64),
                     torch.zeros(1, t, getattr(attn, "rotary_ndims", d), dtype=torch.float64))
    with torch.no_grad():
        if family.forward == "rope":
            got = attn(x, position_embeddings=identity_rope, attention_mask=mask)[0]
        elif family.forward == "falcon":
            got = attn(x, alibi=None, attention_mask=mask, position_embeddings=identity_rope)[0]
        elif family.forward == "bert":  # BertAttention adds the residual and a LayerNorm after output.dense
            got = attn.output.dense(attn.self(x, attention_mask=mask)[0])
        else:
            got = attn(x, attention_mask=mask)[0]
        norms = (attn.q_norm, attn.k_norm) if family.qk_norm else (None, None)
        scale = getattr(attn, "scaling", d ** -0.5)
        want = reference_attention(x, q, k, v, o, n, kv, d, scale, mask, *norms)
    # most families' eager kernels take the softmax in float32: agreement to ~1e-9, where a wrong split is O(1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_head_counts_follow_each_familys_config_names(tmp_path):
    """Falcon's multi_query decides its K/V heads (a config that contradicts the weights is refused, naming the
    tensor); GPT-2 without config.json reads with --n-heads, its K/V heads read off c_attn's width."""
    falcon = FAMILIES["falcon_multi_query"].build()
    falcon.save_pretrained(tmp_path / "falcon", safe_serialization=True)
    config = json.loads((tmp_path / "falcon" / "config.json").read_text())
    config["multi_query"] = False
    (tmp_path / "falcon" / "config.json").write_text(json.dumps(config))
    with pytest.raises(MegarankError, match=r"h\.0\.self_attention\.query_key_value\.weight has shape \(48, 32\), "
                                            r"expected \(96, 32\) for 4 heads \(4 K/V\)"):
        open_source(tmp_path / "falcon")
    gpt2 = FAMILIES["gpt2"].build()
    gpt2.save_pretrained(tmp_path / "gpt2", safe_serialization=True)
    (tmp_path / "gpt2" / "config.json").unlink()
    with pytest.raises(MegarankError, match="pass --n-heads"):
        open_source(tmp_path / "gpt2")
    with open_source(tmp_path / "gpt2", n_heads=4) as source:
        assert (source.info.family, source.info.n_kv_heads, source.info.d_head) == ("gpt2", 4, 8)


def test_the_cli_says_when_q_k_norms_sit_between_the_factors(tmp_path, capsys):
    """Qwen3: megarank-rank's output and summary.json state that the raw W_Q, W_K were analysed."""
    FAMILIES["qwen3"].build().save_pretrained(tmp_path / "qwen3", safe_serialization=True)
    assert main([str(tmp_path / "qwen3"), "--out", str(tmp_path / "out"), "--no-plots", "--no-progress"]) == 0
    note = "note: q_norm/k_norm present: the qk product analysed is W_Q,hᵀW_K,h of the raw weights"
    assert note in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["details"]["qk_norm"].startswith("q_norm/k_norm present")
