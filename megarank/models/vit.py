"""Vision Transformer (Dosovitskiy et al. 2021), plain PyTorch on one device, on the same Block as the GPT.

    image (B, C, H, W) -> patch_embed (conv or linear) -> [cls] + patches + pos_embed
        -> n_layers x Block(non-causal) -> ln_f -> pool (cls token or mean) -> head -> class logits

The blocks are the GPT's, so their parameters have the same roles (models/roles.py) and the decay groups,
tensor parallelism and the rank tools apply unchanged; the embedding and head rows of the roles table are the
ViT's own (all replicated under TP). Init by role: N(0, init_std), residual projections scaled as in the GPT,
and a zero class head so training starts at uniform predictions. The learned position table is
interpolated (bicubic, on the patch grid) when a checkpoint of another image size is loaded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from megarank.config.schema import ModelConfig
from megarank.models.block import Block, make_norm
from megarank.models.roles import init_by_role


class LinearPatchEmbed(nn.Module):
    """Patches flattened (c, p, p) and projected: the 'linear' patch embedding of the ViT paper."""

    def __init__(self, in_channels: int, patch: int, d_model: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(in_channels * patch * patch, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        patches = F.unfold(x, kernel_size=p, stride=p)  # (B, C*p*p, n_patches)
        return self.proj(patches.transpose(1, 2))


class ConvPatchEmbed(nn.Module):
    def __init__(self, in_channels: int, patch: int, d_model: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, d_model, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, n_patches, d_model)


class ViT(nn.Module):
    def __init__(self, cfg: ModelConfig, label_smoothing: float = 0.0):
        """label_smoothing: of the cross-entropy loss (train.label_smoothing)."""
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch_size
        embed = ConvPatchEmbed if cfg.patch_embed == "conv" else LinearPatchEmbed
        self.patch_embed = embed(cfg.in_channels, cfg.patch_size, cfg.d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model)) if cfg.pooling == "cls" else None
        n_tokens = self.grid * self.grid + (cfg.pooling == "cls")
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.ffn_dim, causal=False, bias=cfg.bias, dropout=cfg.dropout,
                  norm_eps=cfg.norm_eps, attn_backend=cfg.attn_backend, norm=cfg.norm, mlp=cfg.mlp,
                  n_kv_heads=cfg.n_kv_heads, qk_norm=cfg.qk_norm)
            for _ in range(cfg.n_layers))
        self.ln_f = make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)
        self.label_smoothing = label_smoothing
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_by_role(self, std=self.cfg.init_std, n_layers=self.cfg.n_layers)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, C, H, W). Returns the mean cross-entropy if targets (B,) are given, else logits
        (B, n_classes)."""
        x = self.patch_embed(images)  # (B, n_patches, d_model)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.drop(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        logits = self.head(pooled)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "pos_embed"
        if key in state_dict and state_dict[key].shape != self.pos_embed.shape:
            state_dict[key] = resize_pos_embed(state_dict[key], self.grid, has_cls=self.cls_token is not None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: int, *, has_cls: bool) -> torch.Tensor:
    """(1, [1 +] g*g, d) -> (1, [1 +] new_grid², d), bicubic on the 2-D patch grid; the cls slot is kept."""
    cls, grid_part = (pos_embed[:, :1], pos_embed[:, 1:]) if has_cls else (pos_embed[:, :0], pos_embed)
    old = int(math.isqrt(grid_part.shape[1]))
    d = grid_part.shape[-1]
    as_image = grid_part.reshape(1, old, old, d).permute(0, 3, 1, 2)  # (1, d, g, g)
    resized = F.interpolate(as_image.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    resized = resized.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, d)
    return torch.cat([cls, resized], dim=1)
