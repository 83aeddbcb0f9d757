"""Rank analysis of grouped-query (and q/k-normed) models, live and offline, against a direct computation: each
query head h's W_Q,hᵀW_K,g and W_O,h W_V,g with g = h // (n_heads / n_kv_heads), formed whole and decomposed by
numpy's SVD. Live: attention_rank_summary of an in-memory tiny LLaMA. Offline: the tiny LLaMA's checkpoints
(tests/runs.py 'llama-*') through the megarank reader — K/V head counts from the marker, the TP=2×DP=2
checkpoint's heads as the one-process one's, and the report stating that with qk_norm the qk product is that of
the raw weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from megarank.analysis.live import attention_rank_summary
from megarank.analysis.readers.megarank_ckpt import QK_NORM_NOTE, MegarankCheckpoint
from megarank.analysis.report import analyse, write_report
from megarank.config import ModelConfig
from megarank.models.gpt import GPT


def direct_spectra(q, k, v, o, n_heads: int, n_kv: int) -> dict[str, np.ndarray]:
    """(n_heads, d_head) singular values of each head's products, formed whole."""
    q, k, v, o = (t.detach().double().numpy() for t in (q, k, v, o))
    d_head, group = q.shape[0] // n_heads, n_heads // n_kv
    out = {"qk": [], "ov": []}
    for h in range(n_heads):
        g = h // group
        rows, kv_rows = slice(h * d_head, (h + 1) * d_head), slice(g * d_head, (g + 1) * d_head)
        out["qk"].append(np.linalg.svd(q[rows].T @ k[kv_rows], compute_uv=False)[:d_head])
        out["ov"].append(np.linalg.svd(o[:, rows] @ v[kv_rows], compute_uv=False)[:d_head])
    return {p: np.array(s) for p, s in out.items()}


def test_live_summary_pairs_each_query_head_with_its_kv_head():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layers=2, d_model=32, n_heads=8, n_kv_heads=2, seq_len=8, vocab_size=16,
                            position="rotary", norm="rmsnorm", mlp="swiglu", qk_norm=True))
    with torch.no_grad():  # low-rank K/V heads of different ranks, so a wrong pairing changes the ranks
        for i, block in enumerate(model.blocks):
            for g in range(2):
                keep = torch.tensor([1.0] * (1 + g + i) + [0.0] * (3 - g - i)).unsqueeze(1)  # rank 1 + g + i
                block.attn.k_proj.weight[g * 4:(g + 1) * 4, :] *= keep
    summary = attention_rank_summary(model, n_heads=8, rtol=0.01)
    for layer, block in enumerate(model.blocks):
        a = block.attn
        s = direct_spectra(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight, 8, 2)
        for product in ("qk", "ov"):
            ranks = (s[product] > 0.01 * s[product][:, :1]).sum(1)
            assert summary[f"rank/{product}_mean/layer{layer}"] == pytest.approx(ranks.mean())


def test_checkpoints_read_with_their_kv_heads(launched, tmp_path):
    tags = {name: launched(name) / "checkpoints" / "global_step8" for name in ("llama-reference",
                                                                               "llama-tp2-dp2-zero1")}
    tables = {}
    for name, tag in tags.items():
        with MegarankCheckpoint(tag) as source:
            assert (source.info.n_heads, source.info.n_kv_heads, source.info.d_head) == (4, 2, 8)
            assert source.info.details["qk_norm"] == QK_NORM_NOTE
            tables[name] = analyse(source, rtol=0.01, atol=1e-3, progress=False)
            if name == "llama-reference":
                for shards in source.layers():
                    (shard,) = shards
                    s = direct_spectra(shard.q, shard.k, shard.v, shard.o, 4, 2)
                    for product in ("qk", "ov"):
                        np.testing.assert_allclose(tables[name].sv[product][shard.layer], s[product], rtol=1e-6,
                                                   atol=1e-9 * s[product].max())
    one, tp = tables["llama-reference"], tables["llama-tp2-dp2-zero1"]
    for product in ("qk", "ov"):  # the same training at another layout: the same heads in the same places
        np.testing.assert_allclose(tp.sv[product], one.sv[product], rtol=1e-3, atol=1e-5)
    write_report(tp, tmp_path / "rank", plots=False)
    summary = json.loads((tmp_path / "rank" / "summary.json").read_text())
    assert summary["model"]["n_kv_heads"] == 2
    assert "raw q_proj/k_proj weights" in summary["details"]["qk_norm"]
