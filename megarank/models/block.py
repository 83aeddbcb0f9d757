"""The one transformer block (pre-LayerNorm), shared by the GPT and the ViT.

    x = x + attn(ln_1(x))
    x = x + mlp(ln_2(x))

Parameter names matter: megarank/models/roles.py maps each name (`attn.{q,k,v,o}_proj`, `mlp.fc_in`,
`mlp.fc_out`, `ln_1`, `ln_2`) to its role, and the optimizer groups, tensor parallelism, the init and the rank
tools read the roles, never the names. A new or renamed parameter here needs its row there.
"""

from __future__ import annotations

import torch
from torch import nn

from megarank.models.attention import RotaryEmbedding, SelfAttention


class MLP(nn.Module):
    """fc_in -> GELU -> fc_out."""

    def __init__(self, d_model: int, d_ff: int, *, bias: bool, dropout: float):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(self.act(self.fc_in(x))))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, causal: bool, bias: bool, dropout: float,
                 norm_eps: float, attn_backend: str, rotary: RotaryEmbedding | None = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, eps=norm_eps, bias=bias)
        self.attn = SelfAttention(d_model, n_heads, causal=causal, bias=bias, dropout=dropout,
                                  backend=attn_backend, rotary=rotary)
        self.ln_2 = nn.LayerNorm(d_model, eps=norm_eps, bias=bias)
        self.mlp = MLP(d_model, d_ff, bias=bias, dropout=dropout)
        # set by parallel/activation_checkpointing.py: runs forward so that backward recomputes it
        self.recompute = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute is not None and self.training and torch.is_grad_enabled():
            return self.recompute(self._forward, x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))
