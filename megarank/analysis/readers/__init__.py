"""Where the attention weights come from: readers that yield one layer's weights at a time, offline.

    open_source(path) -> WeightSource, picked from what is on disk:
        megarank_ckpt.MegarankCheckpoint   a megarank run dir, its checkpoint.dir, or one global_step<N> tag
        hf_safetensors.SafetensorsModel    a Hugging Face directory of *.safetensors (the layouts of hf_layouts.py)

A reader checks everything it can before the first layer is read (files present and readable, tensor names
known, shapes consistent with the head count), so bad input fails before any work is done or output written.
Each layer comes as a list of AttentionShard: one per tensor-parallel rank of a megarank TP checkpoint (heads
live whole inside one rank, so they are analysed where they lie, never gathered), otherwise a single one.
Nothing here initialises a process group or needs a GPU.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megarank.errors import MegarankError


@dataclass(frozen=True)
class ModelInfo:
    """What was analysed: the attention geometry and where the weights came from."""

    family: str  # 'gpt', 'vit' (megarank) or the Hugging Face model_type ('llama', 'bert', ...)
    n_layers: int
    n_heads: int  # query heads per layer
    n_kv_heads: int  # K/V heads per layer (< n_heads under grouped-query attention)
    d_model: int
    d_head: int
    source: str  # the resolved directory read
    format: str  # 'megarank' or 'hf-safetensors'
    details: dict = field(default_factory=dict)  # JSON-ready: step, zero_stage, tp, weights, wd_attn, dtype...


@dataclass(frozen=True)
class AttentionShard:
    """One layer's attention weights for the query heads first_head, first_head + 1, ... in nn.Linear layout:
    q (n_q·d_head, d_model), k and v (n_kv·d_head, d_model), o (d_model, n_q·d_head)."""

    layer: int
    first_head: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor


class WeightSource(ABC):
    """An opened, validated checkpoint. Use as a context manager: close() releases files and temp dirs."""

    info: ModelInfo

    @abstractmethod
    def layers(self) -> Iterator[list[AttentionShard]]:
        """Layer 0, 1, ... in order, each as its shards; only that layer's attention weights are loaded."""

    def close(self) -> None:
        """Release what the reader holds open."""

    def __enter__(self) -> WeightSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_head_shapes(shapes: dict[str, tuple[str, tuple[int, ...]]], *, n_q: int, n_kv: int, d_head: int,
                      d_model: int, where: str) -> None:
    """Raise a MegarankError naming `where` unless the shapes {role: (tensor name, shape)} for roles q, k, v, o
    fit n_q query heads and n_kv K/V heads of width d_head on a d_model residual stream."""
    expected = {"q": (n_q * d_head, d_model), "k": (n_kv * d_head, d_model), "v": (n_kv * d_head, d_model),
                "o": (d_model, n_q * d_head)}
    for role, (name, shape) in shapes.items():
        if tuple(shape) != expected[role]:
            raise MegarankError(f"'{where}': {name} has shape {tuple(shape)}, expected {expected[role]} for "
                                f"{n_q} heads ({n_kv} K/V) of width {d_head}; the head count does not match "
                                "the weights (check num_attention_heads / n_heads)")


def head_layout(n_heads: int, n_kv_heads: int, hidden: int, head_dim: int | None, *, where: str) -> int:
    """d_head for this head count, or a MegarankError naming `where` when the counts cannot fit the width."""
    if n_heads <= 0 or n_kv_heads <= 0 or n_heads % n_kv_heads:
        raise MegarankError(f"'{where}': {n_heads} attention heads cannot share {n_kv_heads} K/V heads evenly; "
                            "the head counts are inconsistent")
    if head_dim is None:
        if hidden % n_heads:
            raise MegarankError(f"'{where}': d_model {hidden} is not divisible by {n_heads} heads; the head "
                                "count does not match the weights")
        head_dim = hidden // n_heads
    return head_dim


def open_source(path: str | Path, *, weights: str = "module", n_heads: int | None = None,
                prefix: str | None = None) -> WeightSource:
    """The reader for `path`. weights: 'module' (as the model held them) or 'fp32' (ZeRO's master copy,
    megarank checkpoints only). n_heads: the query-head count where the checkpoint does not record it; where
    it does, a different value is refused. prefix: which attention stack of a safetensors model holding
    several (e.g. 'language_model.model.')."""
    from megarank.analysis.readers import hf_safetensors, megarank_ckpt
    from megarank.ckpt.resolve import looks_like_checkpoint, resolve_tag
    from megarank.ckpt.tags import COMPLETE_MARKER

    path = Path(path)
    if not path.exists():
        raise MegarankError(f"'{path}' does not exist")
    if looks_like_checkpoint(path):
        if prefix is not None:
            raise MegarankError(f"'{path}' is a megarank checkpoint: its attention weights have fixed names, so "
                                "--prefix does not apply; drop it")
        return megarank_ckpt.MegarankCheckpoint(resolve_tag(path), weights=weights, n_heads=n_heads)
    if hf_safetensors.looks_like(path):
        if weights != "module":
            raise MegarankError(f"'{path}' is a safetensors model: it holds one copy of the weights, so "
                                "--weights fp32 (ZeRO's master copy) does not apply; drop it")
        return hf_safetensors.SafetensorsModel(path, n_heads=n_heads, prefix=prefix)
    raise MegarankError(f"'{path}' is not a checkpoint: expected a megarank run or checkpoint directory "
                        f"(global_step<N>/ with {COMPLETE_MARKER}) or a Hugging Face directory "
                        "with *.safetensors files")
