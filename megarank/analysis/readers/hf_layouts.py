"""Where each Hugging Face family keeps its attention weights, and how its fused tensors split into q, k, v, o.

One row of LAYOUTS per layout: the names of a layer's attention tensors (megarank/hf/names.py ATTENTION, the
table the HF converter reads too), which slot each fills, and how the slots become q, k, v, o in nn.Linear
layout (q (n_q·d_head, d_model), k and v (n_kv·d_head, d_model), o (d_model, n_q·d_head)). Query head h reads
K/V head h // (n_q / n_kv) in every layout, as transformers' repeat_kv and Falcon's broadcast do.

Slots: q, k, v, o (one projection each) or qkv (q, k and v fused into one tensor) and o. Two fused orders exist:
    blocked   [all q heads; all k heads; all v heads]                   GPT-2 c_attn, Phi-3 qkv_proj
    grouped   per K/V head g: [its n_q/n_kv q heads; k_g; v_g]          GPT-NeoX query_key_value ([q,k,v] per
              head, n_kv = n_q), Falcon query_key_value (multi-query: n_kv = 1; new_decoder_architecture:
              num_kv_heads; else n_kv = n_q), as FalconAttention._split_heads views it
GPT-2 stores Conv1D weights as (in, out), the transpose of nn.Linear's; its rows here are transposed on read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from megarank.hf.names import ATTENTION, AttentionNames


@dataclass(frozen=True)
class Geometry:
    """A layer's attention shape: query heads, K/V heads, head width and residual width."""

    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int


def linear_shape(slot: str, g: Geometry) -> tuple[int, int]:
    """The nn.Linear (out, in) shape a tensor filling `slot` has under geometry g."""
    rows = {"q": g.n_heads, "k": g.n_kv_heads, "v": g.n_kv_heads, "qkv": g.n_heads + 2 * g.n_kv_heads}
    if slot == "o":
        return g.d_model, g.n_heads * g.d_head
    return rows[slot] * g.d_head, g.d_model


def kv_heads_from_shape(slot: str, shape: tuple[int, int], n_heads: int, d_head: int) -> int | None:
    """The K/V head count a k or qkv tensor of this nn.Linear shape implies (None: it implies none)."""
    if slot == "k" and shape[0] % d_head == 0:
        return shape[0] // d_head
    if slot == "qkv" and shape[0] % d_head == 0 and (shape[0] // d_head - n_heads) % 2 == 0:
        return (shape[0] // d_head - n_heads) // 2
    return None


def separate(w: dict[str, torch.Tensor], g: Geometry) -> tuple[torch.Tensor, ...]:
    return w["q"], w["k"], w["v"], w["o"]


def blocked(w: dict[str, torch.Tensor], g: Geometry) -> tuple[torch.Tensor, ...]:
    q, k, v = w["qkv"].split([g.n_heads * g.d_head, g.n_kv_heads * g.d_head, g.n_kv_heads * g.d_head])
    return q, k, v, w["o"]


def grouped(w: dict[str, torch.Tensor], g: Geometry) -> tuple[torch.Tensor, ...]:
    per_group = g.n_heads // g.n_kv_heads
    qkv = w["qkv"].view(g.n_kv_heads, per_group + 2, g.d_head, g.d_model)  # (n_kv, [q.., k, v], d_head, d)
    q = qkv[:, :per_group].reshape(-1, g.d_model)
    k, v = (qkv[:, i].reshape(-1, g.d_model) for i in (per_group, per_group + 1))
    return q, k, v, w["o"]


def config_kv_heads(config: dict, n_heads: int) -> int | None:
    """K/V heads as LLaMA-style configs name them (None: not said, read off the weights)."""
    value = config.get("num_key_value_heads")
    return value if isinstance(value, int) else None


def falcon_kv_heads(config: dict, n_heads: int) -> int | None:
    """K/V heads as FalconAttention derives them: num_kv_heads (or the older n_head_kv) under
    new_decoder_architecture, else 1 when multi_query, else n_heads (keys absent: read off the weights)."""
    if config.get("new_decoder_architecture"):
        value = config.get("num_kv_heads", config.get("n_head_kv"))
        return value if isinstance(value, int) else None
    if "multi_query" not in config:
        return None
    return 1 if config["multi_query"] else n_heads


@dataclass(frozen=True)
class Layout:
    """How one family names and lays out a layer's attention weights."""

    name: str  # the style recorded in the summary ('llama', 'gpt2', ...)
    names: AttentionNames  # its row of megarank/hf/names.py ATTENTION
    split: Callable[[dict[str, torch.Tensor], Geometry], tuple[torch.Tensor, ...]]  # slots -> (q, k, v, o)
    kv_heads: Callable[[dict, int], int | None] = config_kv_heads  # the config's K/V head count
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = "|".join(re.escape(n) for names in self.tensors.values() for n in names)
        object.__setattr__(self, "pattern", re.compile(
            rf"^(?P<prefix>(?:.*\.)?){self.layer}(?P<tensor>{names})\.weight$"))

    @property
    def families(self) -> str:
        """Which Hugging Face families store this layout, for messages and docs."""
        return self.names.families

    @property
    def layer(self) -> str:
        """Regex for the part of a name before the tensor, capturing (?P<layer>\\d+)."""
        return self.names.layer_regex()

    @property
    def tensors(self) -> dict[str, tuple[str, ...]]:
        """slot -> the tensor names (before '.weight') that may fill it."""
        return self.names.modules

    @property
    def conv1d(self) -> bool:
        """Stored as (in, out): transposed on read."""
        return self.names.conv1d

    @property
    def qk_norm(self) -> tuple[str, ...]:
        """Per-head norm tensors between W_Q/W_K and the dot product, if present."""
        return self.names.qk_norm

    @property
    def key(self) -> str:
        """The slot whose presence marks a stack as this layout (q or qkv: o names are shared)."""
        return next(iter(self.tensors))

    def slot(self, tensor: str) -> str:
        return next(slot for slot, names in self.tensors.items() if tensor in names)

    def stored_shape(self, slot: str, g: Geometry) -> tuple[int, int]:
        shape = linear_shape(slot, g)
        return shape[::-1] if self.conv1d else shape

    def to_linear(self, w: dict[str, torch.Tensor], g: Geometry) -> tuple[torch.Tensor, ...]:
        """A layer's stored tensors {slot: tensor} as (q, k, v, o) in nn.Linear layout."""
        if self.conv1d:
            w = {slot: t.T for slot, t in w.items()}
        return tuple(t.contiguous() for t in self.split(w, g))


SPLITS = {"llama": separate, "bert": separate, "gpt2": blocked, "gpt_neox": grouped, "falcon": grouped,
          "phi3": blocked}
"""How each layout's slots become q, k, v, o (module docstring)."""
KV_HEADS = {"falcon": falcon_kv_heads}
"""Layouts whose config names its K/V heads otherwise than num_key_value_heads."""
LAYOUTS = tuple(Layout(name, names, SPLITS[name], KV_HEADS.get(name, config_kv_heads))
                for name, names in ATTENTION.items())


def families() -> str:
    """Every family read, for messages: 'LLaMA, Mistral, ..., Phi-3'."""
    return ", ".join(layout.families for layout in LAYOUTS)
