"""Decoder-only GPT, GPT-2 style (Radford et al. 2019; nanoGPT's layout), plain PyTorch on one device.

    tokens -> wte (+ wpe, or RoPE inside attention) -> n_layers x Block(causal) -> ln_f -> lm_head -> logits

Choices: pre-LayerNorm; separate q/k/v/o projections (per-head factors readable, see attention.py); GELU MLP
of width d_ff; no biases by default; LM head tied to wte by default. The LLaMA family is the same model with
model.norm=rmsnorm, model.mlp=swiglu, model.position=rotary, and optionally model.n_kv_heads (grouped-query
attention) and model.qk_norm (Qwen3); tests/models/test_llama_vs_transformers.py holds it to transformers'
LlamaForCausalLM and Qwen3ForCausalLM. Init by each parameter's role
(models/roles.py): N(0, init_std), with the residual output projections (o_proj, fc_out) scaled by
1/sqrt(2 * n_layers) as in GPT-2, so the residual stream's variance does not grow with depth. No collectives
here: tensor parallelism is applied afterwards by megarank/parallel/tensor_parallel.py, which swaps the
linears and sets `loss_fn`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megarank.config.schema import ModelConfig
from megarank.models.attention import RotaryEmbedding
from megarank.models.block import Block, make_norm
from megarank.models.chunked_loss import chunked_next_token_loss
from megarank.models.roles import init_by_role


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set (the trainer fills it from the tokenizer)")
        self.cfg = cfg
        self.max_positions = cfg.max_positions or cfg.seq_len
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(self.max_positions, cfg.d_model) if cfg.position == "learned" else None
        rotary = RotaryEmbedding(cfg.d_head, cfg.rope_base) if cfg.position == "rotary" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.ffn_dim, causal=True, bias=cfg.bias, dropout=cfg.dropout,
                  norm_eps=cfg.norm_eps, attn_backend=cfg.attn_backend, rotary=rotary, norm=cfg.norm, mlp=cfg.mlp,
                  n_kv_heads=cfg.n_kv_heads, qk_norm=cfg.qk_norm)
            for _ in range(cfg.n_layers))
        self.ln_f = make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        # the loss of the head's logits, (N, vocab) and targets (N,) -> mean: the hook the TP step sets to the
        # vocabulary-parallel loss when it splits the head by vocabulary (logits then (N, vocab / tp))
        self.loss_fn = F.cross_entropy
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_by_role(self, std=self.cfg.init_std, n_layers=self.cfg.n_layers)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids. Returns the mean next-token loss if targets (B, T) are given, else logits
        (B, T, vocab)."""
        B, T = idx.shape
        if T > self.max_positions:
            raise ValueError(f"sequence of {T} tokens exceeds the position table ({self.max_positions})")
        x = self.wte(idx)  # (B, T, d_model)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x)  # (B, T, vocab)
        if self.cfg.loss_chunk_tokens:
            return chunked_next_token_loss(self.lm_head, self.loss_fn, x.reshape(B * T, -1), targets.reshape(B * T),
                                           self.cfg.loss_chunk_tokens)
        return self.loss_fn(self.lm_head(x).float().view(B * T, -1), targets.reshape(B * T))

