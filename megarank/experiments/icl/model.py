"""The model: `n_layers` residual attention layers, x <- x + attn(x), no LayerNorm, no MLP, no embedding and no
readout: the prediction is the query token's y coordinate after the last layer, so every parameter is an
attention projection and weight decay falls on W_Q, W_K, W_V and W_O only — exactly L2 on the factors of the
per-head products W_Q,hᵀ W_K,h and W_O,h W_V,h (docs/paper.md, "## Per-head products and how megarank measures
them").

A small module of its own rather than megarank.models.block: the Block's LayerNorm and MLP would add weights
outside the products the theory is about, and megarank's SelfAttention has neither linear attention (the
setting of von Oswald et al.) nor the key mask used here (every token attends to the N context tokens only,
never to the query, whose y is unknown). The projections keep megarank's names and layout
(blocks.<i>.attn.{q,k,v,o}_proj, nn.Linear without bias), so megarank.analysis reads them unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from megarank.experiments.icl.config import Config


class ContextAttention(nn.Module):
    """Multi-head self-attention in which every token attends to the first n_context tokens (the context)."""

    def __init__(self, d_model: int, n_heads: int, kind: str):
        super().__init__()
        self.d_head, self.kind = d_model // n_heads, kind
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, n_context: int) -> torch.Tensor:
        B, T, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T', nh*hs) -> (B, nh, T', hs)
            return t.view(B, t.shape[1], -1, self.d_head).transpose(1, 2)

        context = x[:, :n_context]
        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(context)), heads(self.v_proj(context))
        scores = q @ k.transpose(-2, -1)  # (B, nh, T, N)
        if self.kind == "linear":
            probs = scores / n_context  # von Oswald et al.: the 1/N makes the layer one GD step on the context
        else:
            probs = (scores / math.sqrt(self.d_head)).softmax(dim=-1)
        y = (probs @ v).transpose(1, 2).reshape(B, T, -1)  # (B, T, nh*hs)
        return self.o_proj(y)


class Layer(nn.Module):
    """x <- x + attn(x): no LayerNorm, no MLP."""

    def __init__(self, d_model: int, n_heads: int, kind: str):
        super().__init__()
        self.attn = ContextAttention(d_model, n_heads, kind)

    def forward(self, x: torch.Tensor, n_context: int) -> torch.Tensor:
        return x + self.attn(x, n_context)


class AttentionOnly(nn.Module):
    """n_layers attention layers on the residual stream; the prediction is the query token's y coordinate."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.y_index = cfg.d
        self.blocks = nn.ModuleList(Layer(cfg.d_model, cfg.n_heads, cfg.attention) for _ in range(cfg.n_layers))
        for p in self.parameters():
            nn.init.normal_(p, std=cfg.init_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N+1, d_model) -> the predicted y of the last (query) token, (B,)."""
        n_context = tokens.shape[1] - 1
        x = tokens
        for block in self.blocks:
            x = block(x, n_context)
        return x[:, -1, self.y_index]
