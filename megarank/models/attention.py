"""Multi-head self-attention with separate q/k/v/o projections, so every head's factors can be read off.

Per head h (d_head = d_model / n_heads), in nn.Linear's (out, in) layout:
    W_Q,h = q_proj.weight[h*d_head:(h+1)*d_head, :]      (d_head, d_model), likewise W_K,h and W_V,h
    W_O,h = o_proj.weight[:, h*d_head:(h+1)*d_head]      (d_model, d_head)
The paper's products are W_Q,h^T W_K,h and W_O,h W_V,h (docs/paper.md, "Per-head products and how megarank
measures them"); megarank.analysis reads them this way, finding the four by their roles (models/roles.py).

Grouped-query attention (model.n_kv_heads < n_heads; Ainslie et al. 2023): k_proj and v_proj have n_kv_heads
heads, and query head h reads K/V head h // (n_heads / n_kv_heads), so W_K,h above means that K/V head's rows.
The kernels take the fewer K/V heads as they are (flash_attn natively, SDPA with enable_gqa); only the math
path repeats them. qk_norm (Qwen3, OLMo2): an RMSNorm over each head's d_head features of q and of k, one gain
shared by all heads, before RoPE.

The kernel is pluggable: flash_attn (GPU, bf16/fp16), torch SDPA (its flash/cuDNN/efficient kernels on GPU,
a fused CPU kernel otherwise), or the explicit math path that is the reference for both.
Under tensor parallelism the projections are replaced by their sharded versions (megarank.parallel); the
number of local heads is read from q_proj's output width, so this file needs no parallel knowledge.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import nn

from megarank.errors import MegarankError

HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


def resolve_backend(requested: str, q: torch.Tensor) -> str:
    """The kernel to use for tensors like q: 'auto' prefers flash_attn where it can run, else SDPA."""
    flash_ok = HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    if requested == "auto":
        return "flash" if flash_ok else "sdpa"
    if requested == "flash" and not flash_ok:
        raise MegarankError("model.attn_backend=flash needs the flash_attn package, a CUDA GPU and bf16/fp16; "
                            "install megarank[flash] or use attn_backend=auto")
    return requested


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, backend: str,
              dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_head)) v for q (B, nh, T, hs) and k, v (B, nkv, T, hs), nkv dividing nh (query
    head h reads K/V head h // (nh / nkv)); returns (B, nh, T, hs)."""
    backend = resolve_backend(backend, q)
    gqa = k.size(1) != q.size(1)
    if backend == "flash":
        from flash_attn import flash_attn_func  # optional extra: megarank[flash]

        # flash_attn wants (B, T, nh, hs)
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p,
                              causal=causal)
        return out.transpose(1, 2)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, enable_gqa=gqa)
    if gqa:  # the reference path copies each K/V head to its group of query heads
        group = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, T, T)
    if causal:
        T = q.size(-2)
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p, training=dropout_p > 0)
    return probs @ v


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021), rotate-half convention as in GPT-NeoX and LLaMA; applied to q and k only."""

    def __init__(self, d_head: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, nh, T, hs) rotated by position."""
        T = x.size(-2)
        angles = torch.outer(torch.arange(T, device=x.device, dtype=torch.float32), self.inv_freq)  # (T, hs/2)
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(x.dtype)
        sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class SelfAttention(nn.Module):
    """Multi-head self-attention (grouped-query with n_kv_heads < n_heads); causal for GPT, bidirectional for
    ViT."""

    def __init__(self, d_model: int, n_heads: int, *, causal: bool, bias: bool, dropout: float,
                 backend: str, rotary: RotaryEmbedding | None = None, n_kv_heads: int | None = None,
                 qk_norm: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        self.d_head = d_model // n_heads
        kv_width = (n_kv_heads or n_heads) * self.d_head
        self.causal, self.dropout, self.backend, self.rotary = causal, dropout, backend, rotary
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_width, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_width, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        # per-head norms of q and k: one gain of d_head shared by every head (and so by every TP rank's heads)
        self.q_norm = nn.RMSNorm(self.d_head, eps=norm_eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.d_head, eps=norm_eps) if qk_norm else None
        self.resid_dropout = nn.Dropout(dropout)
        # the RNG context the attention-probability dropout draws in: the hook the TP step
        # (parallel/tensor_parallel.py) sets to the TP-local stream, so each rank's own heads get their own masks
        self.rng_region = contextlib.nullcontext

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, nh*hs) -> (B, nh, T, hs); nh is local under TP
            return t.view(B, T, -1, self.d_head).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))  # k, v: (B, nkv, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        dropout_p = self.dropout if self.training else 0.0
        # the RNG swap only where dropout draws from it (torch.compile cannot trace RNG state swaps)
        with self.rng_region() if dropout_p > 0 else contextlib.nullcontext():
            y = attention(q, k, v, causal=self.causal, backend=self.backend, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, nh*hs)
        return self.resid_dropout(self.o_proj(y))
