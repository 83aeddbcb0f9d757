"""Expected GPU memory per rank for a config and layout: the formula the docs quote, as code (an estimate
for planning a run, tools/memory_estimate.py; nothing in training depends on it).

Model states (ZeRO paper, Rajbhandari et al. 2020), Ψ = parameters held by one TP rank:
    bf16 mixed precision: 2 B weights + 2 B grads + K = 12 B optimizer (fp32 master, Adam m, v)
    fp32:                 4 B weights + 4 B grads + K = 8 B optimizer (Adam m, v)
    ZeRO-0: (w + g + K)Ψ    ZeRO-1: (w + g)Ψ + KΨ/dp    ZeRO-2: wΨ + (g + K)Ψ/dp    ZeRO-3: (w + g + K)Ψ/dp
Parameters: q and o d×d, k and v d×(n_kv_heads·d_head) (grouped-query attention), the MLP two d×d_ff matrices
(GELU) or three (SwiGLU); norms d each (twice with LayerNorm biases), per-head q/k norms d_head each.
Activations per layer without recomputation or sequence parallelism (Korthikanti et al. 2022), 16-bit:
    s·b·h·(10 + 24/t + 5·a·s/(h·t)) bytes; flash attention drops the a·s² term (it recomputes the scores).
Activation checkpointing (train.activation_checkpointing): a recomputed block keeps only its 16-bit input,
2·s·b·h bytes, and one block's full activations exist at a time during its recompute (Korthikanti et al.'s
"full recomputation"); 'selective' recomputes every k-th block, the others keep everything.
Logits: s·b·V/t in fp32, twice (the logits and the softmax saved for the backward); with model.loss_chunk_tokens
only one chunk of tokens' worth at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from megarank.config.schema import ExperimentConfig
from megarank.parallel.activation_checkpointing import checkpointed_block_indices


@dataclass(frozen=True)
class MemoryEstimate:
    params_total: int
    params_per_rank: int
    model_states_gb: float
    activations_gb: float
    logits_gb: float

    @property
    def total_gb(self) -> float:
        return self.model_states_gb + self.activations_gb + self.logits_gb


def estimate_memory(cfg: ExperimentConfig, world_size: int, *, bf16: bool = True,
                    flash_attention: bool = True) -> MemoryEstimate:
    m, tp = cfg.model, cfg.parallel.tp
    dp = world_size // tp
    vocab = m.vocab_size or 50304
    h, s, b, L = m.d_model, m.seq_len, cfg.train.micro_batch, m.n_layers
    kv = m.kv_heads * m.d_head
    mlp_matrices = 3 if m.mlp == "swiglu" else 2
    sharded = L * (2 * h * h + 2 * h * kv + mlp_matrices * h * m.ffn_dim) + vocab * h  # q,o; k,v; MLP; embedding
    norm_params = 2 if m.bias and m.norm == "layernorm" else 1  # gain (and bias) per feature
    replicated = ((2 * L + 1) * h * norm_params + L * 2 * m.d_head * m.qk_norm
                  + (m.max_positions or s) * h * (m.position == "learned"))  # norms, q/k norms, positions
    if not m.tie_embeddings:
        sharded += vocab * h
    psi = sharded // tp + replicated
    w, g, k = (2, 2, 12) if bf16 else (4, 4, 8)
    per_param = {0: w + g + k, 1: w + g + k / dp, 2: w + (g + k) / dp, 3: (w + g + k) / dp}[cfg.zero.stage]
    attention_scores = 0 if flash_attention else 5 * m.n_heads * s / (h * tp)
    per_block = s * b * h * (10 + 24 / tp + attention_scores)
    recomputed = len(checkpointed_block_indices(L, cfg.train.activation_checkpointing,
                                                cfg.train.activation_checkpointing_every))
    activations = (L - recomputed) * per_block + recomputed * 2 * s * b * h + (per_block if recomputed else 0)
    logit_tokens = min(m.loss_chunk_tokens, s * b) if m.loss_chunk_tokens else s * b
    logits = 2 * 4 * logit_tokens * vocab / tp
    gb = 1024**3
    return MemoryEstimate(params_total=sharded + replicated, params_per_rank=psi, model_states_gb=psi * per_param / gb,
                          activations_gb=activations / gb, logits_gb=logits / gb)
