"""Model FLOPs per token and utilisation (MFU), PaLM appendix B convention: 6 N per token for the dense
weights plus 12 L T d for attention scores, forward and backward, no recomputation counted.

N counts the matrices a token goes through: q and o (d × d each), k and v (d × n_kv_heads·d_head each: smaller
under grouped-query attention), the MLP (two d × d_ff matrices for GELU, three for SwiGLU) and the LM head.
The attention-score term is unchanged by GQA: every query head still scores every key."""

from __future__ import annotations

import torch

from megarank.config.schema import ModelConfig

# Dense bf16 peak (no sparsity) by device-name substring, in FLOP/s.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12,
                   "4090": 165e12, "V100": 125e12}


def train_flops_per_token(cfg: ModelConfig) -> float:
    d, L, T = cfg.d_model, cfg.n_layers, cfg.seq_len
    kv = cfg.kv_heads * cfg.d_head
    mlp_matrices = 3 if cfg.mlp == "swiglu" else 2  # gate, up, down or fc_in, fc_out
    per_layer = 2 * d * d + 2 * d * kv + mlp_matrices * d * cfg.ffn_dim  # q, o; k, v; the MLP
    dense = L * per_layer + cfg.vocab_size * d  # LM head (the embedding lookup costs no FLOPs)
    return 6 * dense + 12 * L * T * d


def mfu(achieved_flops_per_device: float, device: torch.device) -> float:
    """Fraction of the device's bf16 peak; NaN when the device is not in the table."""
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return achieved_flops_per_device / peak if peak else float("nan")
