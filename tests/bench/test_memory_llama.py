"""The memory estimate and the FLOP count of the LLaMA options against counts worked by hand: a SwiGLU MLP's three
matrices, grouped-query attention's smaller k/v, RMSNorm's gain only and the per-head q/k norms; and the two
LLaMA presets against their published parameter counts (LLaMA-2-7B 6,738,415,616; Llama-3.2-1B 1,235,814,400),
with tools/memory_estimate.py running on them."""

import pytest

from megarank.bench.memory import estimate_memory
from megarank.config import load_config
from megarank.train.throughput import train_flops_per_token

GB = 1024**3
LLAMA = ["model.n_layers=2", "model.d_model=64", "model.n_heads=8", "model.n_kv_heads=2", "model.seq_len=32",
         "model.vocab_size=256", "model.qk_norm=true", "model.ffn_multiple=64", "parallel.tp=2",
         "train.micro_batch=4", "zero.stage=1"]


def test_estimate_matches_hand_computation():
    cfg = load_config("configs/llama_cpu_small.yaml", LLAMA)
    assert cfg.model.ffn_dim == 192  # 2/3 · 4 · 64 = 170.7, rounded up to 64
    est = estimate_memory(cfg, world_size=8)
    attn = 2 * 64 * 64 + 2 * 64 * (2 * 8)  # q, o; k, v of 2 K/V heads of 8
    mlp = 3 * 64 * 192  # gate, up, down
    sharded = 2 * (attn + mlp) + 256 * 64  # tied embedding
    replicated = 2 * 2 * 64 + 64 + 2 * 2 * 8  # two RMSNorm gains per block, ln_f, q/k norms of d_head 8
    assert est.params_total == sharded + replicated
    psi = sharded // 2 + replicated
    assert est.model_states_gb == pytest.approx(psi * (2 + 2 + 12 / 4) / GB)


def test_flops_count_three_mlp_matrices_and_the_smaller_kv():
    cfg = load_config("configs/llama_cpu_small.yaml", LLAMA).model
    d, L, T = 64, 2, 32
    dense = L * (2 * d * d + 2 * d * 16 + 3 * d * 192) + 256 * d
    assert train_flops_per_token(cfg) == 6 * dense + 12 * L * T * d
    gpt = load_config("configs/default.yaml", ["model.n_layers=2", "model.d_model=64", "model.n_heads=8",
                                               "model.seq_len=32", "model.vocab_size=256"]).model
    assert train_flops_per_token(gpt) == 6 * (L * (4 * d * d + 2 * d * 4 * d) + 256 * d) + 12 * L * T * d


@pytest.mark.parametrize("preset, params", [("configs/model/llama2_7b.yaml", 6_738_415_616),
                                            ("configs/model/llama_1b.yaml", 1_235_814_400)])
def test_presets_have_their_published_size(preset, params):
    assert estimate_memory(load_config(preset, []), world_size=8).params_total == params


@pytest.mark.parametrize("preset", ["configs/model/llama2_7b.yaml", "configs/model/llama_1b.yaml"])
def test_memory_estimate_tool_runs_on_the_presets(preset, capsys):
    import importlib.util

    from tests.helpers import REPO

    spec = importlib.util.spec_from_file_location("memory_estimate", REPO / "tools/memory_estimate.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([preset, "--world-size", "8", "parallel.tp=8", "train.micro_batch=1"]) == 0
    assert "per TP rank (tp=8, dp=1" in capsys.readouterr().out
