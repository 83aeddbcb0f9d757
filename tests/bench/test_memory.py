"""The memory estimate against the formula worked by hand for a small config (ZeRO-1, TP=2, DP=4, bf16)."""

import pytest

from megarank.bench.memory import estimate_memory
from megarank.config import load_config

GB = 1024**3


def test_estimate_matches_hand_computation():
    cfg = load_config("configs/default.yaml", ["model.n_layers=2", "model.d_model=64", "model.n_heads=4",
                                               "model.seq_len=32", "model.vocab_size=256", "parallel.tp=2",
                                               "train.micro_batch=4", "zero.stage=1"])
    est = estimate_memory(cfg, world_size=8)
    sharded = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 256 * 64  # attn + mlp + tied embedding
    replicated = 2 * 2 * 64 + 64 + 32 * 64  # two LayerNorms per block, ln_f, learned positions
    assert est.params_total == sharded + replicated
    psi = sharded // 2 + replicated
    assert est.model_states_gb == pytest.approx(psi * (2 + 2 + 12 / 4) / GB)
    assert est.activations_gb == pytest.approx(2 * 32 * 4 * 64 * (10 + 24 / 2) / GB)
    assert est.logits_gb == pytest.approx(8 * 32 * 4 * 256 / 2 / GB)
    no_flash = estimate_memory(cfg, world_size=8, flash_attention=False)
    assert no_flash.activations_gb > est.activations_gb


@pytest.mark.parametrize("mode, every, recomputed", [("full", 2, 4), ("selective", 2, 2), ("selective", 3, 2)])
def test_activation_checkpointing_keeps_block_inputs_and_one_block(mode, every, recomputed):
    base = ["model.n_layers=4", "model.d_model=64", "model.n_heads=4", "model.seq_len=32", "model.vocab_size=256",
            "train.micro_batch=4"]
    plain = estimate_memory(load_config("configs/default.yaml", base), world_size=1)
    cfg = load_config("configs/default.yaml", [*base, f"train.activation_checkpointing={mode}",
                                               f"train.activation_checkpointing_every={every}"])
    est = estimate_memory(cfg, world_size=1)
    block = 32 * 4 * 64 * (10 + 24)
    assert plain.activations_gb == pytest.approx(4 * block / GB)
    assert est.activations_gb == pytest.approx(((4 - recomputed) * block + recomputed * 2 * 32 * 4 * 64 + block) / GB)


def test_chunked_loss_holds_one_chunk_of_logits():
    base = ["model.n_layers=2", "model.d_model=64", "model.n_heads=4", "model.seq_len=32", "model.vocab_size=256",
            "train.micro_batch=4"]
    est = estimate_memory(load_config("configs/default.yaml", [*base, "model.loss_chunk_tokens=16"]), world_size=1)
    assert est.logits_gb == pytest.approx(8 * 16 * 256 / GB)
