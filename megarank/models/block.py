"""The one transformer block (pre-norm), shared by the GPT and the ViT.

    x = x + attn(ln_1(x))
    x = x + mlp(ln_2(x))

Its options (ModelConfig): the norms LayerNorm (GPT-2) or RMSNorm (LLaMA), under the same names ln_1, ln_2; the
MLP GELU (fc_in, fc_out) or SwiGLU (gate_proj, up_proj, down_proj; Shazeer 2020); grouped-query attention and
per-head q/k norms inside SelfAttention (attention.py).

Parameter names matter: megarank/models/roles.py maps each name (`attn.{q,k,v,o}_proj`, `attn.{q,k}_norm`,
`mlp.fc_in`, `mlp.fc_out`, `mlp.{gate,up,down}_proj`, `ln_1`, `ln_2`) to its role, and the optimizer groups, tensor parallelism, the init and the rank
tools read the roles, never the names. A new or renamed parameter here needs its row there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megarank.models.attention import RotaryEmbedding, SelfAttention


class MLP(nn.Module):
    """fc_in -> GELU -> fc_out; GELU exact (erf) or, with tanh=True, its tanh approximation (OpenAI's GPT-2)."""

    def __init__(self, d_model: int, d_ff: int, *, bias: bool, dropout: float, tanh: bool = False):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.act = nn.GELU(approximate="tanh" if tanh else "none")
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(self.act(self.fc_in(x))))


class SwiGLU(nn.Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)), LLaMA's MLP."""

    def __init__(self, d_model: int, d_ff: int, *, bias: bool, dropout: float):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


def make_norm(kind: str, d_model: int, *, eps: float, bias: bool) -> nn.Module:
    """'layernorm' (with a bias when `bias`) or 'rmsnorm' (never a bias) over d_model features."""
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, eps=eps)
    return nn.LayerNorm(d_model, eps=eps, bias=bias)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, causal: bool, bias: bool, dropout: float,
                 norm_eps: float, attn_backend: str, rotary: RotaryEmbedding | None = None, norm: str = "layernorm",
                 mlp: str = "gelu", n_kv_heads: int | None = None, qk_norm: bool = False):
        super().__init__()
        self.ln_1 = make_norm(norm, d_model, eps=norm_eps, bias=bias)
        self.attn = SelfAttention(d_model, n_heads, causal=causal, bias=bias, dropout=dropout,
                                  backend=attn_backend, rotary=rotary, n_kv_heads=n_kv_heads, qk_norm=qk_norm,
                                  norm_eps=norm_eps)
        self.ln_2 = make_norm(norm, d_model, eps=norm_eps, bias=bias)
        if mlp == "swiglu":
            self.mlp = SwiGLU(d_model, d_ff, bias=bias, dropout=dropout)
        else:
            self.mlp = MLP(d_model, d_ff, bias=bias, dropout=dropout, tanh=mlp == "gelu_tanh")
        # set by parallel/activation_checkpointing.py: runs forward so that backward recomputes it
        self.recompute = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute is not None and self.training and torch.is_grad_enabled():
            return self.recompute(self._forward, x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))
