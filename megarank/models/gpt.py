"""Decoder-only GPT, GPT-2 style (Radford et al. 2019; nanoGPT's layout), plain PyTorch on one device.

    tokens -> wte (+ wpe, or RoPE inside attention) -> n_layers x Block(causal) -> ln_f -> lm_head -> logits

Choices: pre-LayerNorm; separate q/k/v/o projections (per-head factors readable, see attention.py); GELU MLP
of width d_ff; no biases by default; LM head tied to wte by default. Init: N(0, init_std), with the residual
output projections (o_proj, fc_out) scaled by 1/sqrt(2 * n_layers) as in GPT-2, so the residual stream's
variance does not grow with depth. No collectives here: tensor parallelism is applied afterwards by
megarank.parallel, which swaps the linears and the loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from megarank.config.schema import ModelConfig
from megarank.models.attention import RotaryEmbedding
from megarank.models.block import Block
from megarank.models.chunked_loss import chunked_next_token_loss


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
                  norm_eps=cfg.norm_eps, attn_backend=cfg.attn_backend, rotary=rotary)
            for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.loss_fn = F.cross_entropy  # swapped for the vocab-parallel loss under tensor parallelism
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln_" in name or name.startswith("ln_"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "fc_out.weight")):
                nn.init.normal_(p, mean=0.0, std=residual_std)
            else:
                nn.init.normal_(p, mean=0.0, std=std)

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

    def num_params(self, exclude_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n
