"""Where each Hugging Face family keeps a layer's attention weights: one row per family, the one place these names
are written. Two users read the table, each with its own logic:

    megarank/hf/layouts.py                    import and export of whole GPT-2 and LLaMA-family models
                                              (train.init_from, megarank-export), which adds the non-attention names
    megarank/analysis/readers/hf_layouts.py   megarank-rank's reader of the attention weights of every family here

Names are relative to the decoder stack (after any prefix such as 'model.', 'transformer.', 'gpt_neox.' or
'model.decoder.'); '{i}' is the layer; a tensor's name ends in '.weight' or '.bias' after the module names here.
No torch here: importing it costs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionNames:
    """How one family names a layer's attention modules."""

    families: str
    """The Hugging Face families that use these names, for messages and docs."""
    layer: str
    """The path from the stack to a layer's attention module, '{i}' the layer ('layers.{i}.self_attn.')."""
    modules: dict[str, tuple[str, ...]]
    """Slot -> the module names that may fill it, the first the one a writer uses. Slots: q, k, v, o, or qkv (q, k
    and v fused into one tensor) and o. The first slot (q or qkv) marks a stack as this family's: o names are
    shared between families."""
    conv1d: bool = False
    """Weights stored as (in, out), the transpose of nn.Linear's (GPT-2's Conv1D)."""
    qk_norm: tuple[str, ...] = ()
    """The per-head q and k norm modules between the projections and the dot product (Qwen3), where present."""

    def name(self, slot: str, *, prefix: str = "", i: int | str = "{i}", param: str = "weight") -> str:
        """The full name of the tensor filling `slot` (or of a qk_norm module) in layer i under `prefix`:
        name('q', prefix='model.', i=0) -> 'model.layers.0.self_attn.q_proj.weight'."""
        module = self.modules[slot][0] if slot in self.modules else slot
        return f"{prefix}{self.layer.format(i=i)}{module}.{param}"

    def layer_regex(self, *, capture: bool = True) -> str:
        """`layer` as a regex, the layer number captured as (?P<layer>) or matched as any number."""
        return re.escape(self.layer).replace(re.escape("{i}"), r"(?P<layer>\d+)" if capture else r"\d+")


ATTENTION: dict[str, AttentionNames] = {
    "llama": AttentionNames("LLaMA, Mistral, Qwen2, Qwen3, Gemma, OPT", "layers.{i}.self_attn.",
                            {"q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",), "o": ("o_proj", "out_proj")},
                            qk_norm=("q_norm", "k_norm")),
    "bert": AttentionNames("BERT, RoBERTa", "layer.{i}.attention.",
                           {"q": ("self.query",), "k": ("self.key",), "v": ("self.value",), "o": ("output.dense",)}),
    "gpt2": AttentionNames("GPT-2", "h.{i}.attn.", {"qkv": ("c_attn",), "o": ("c_proj",)}, conv1d=True),
    "gpt_neox": AttentionNames("GPT-NeoX, Pythia", "layers.{i}.attention.",
                               {"qkv": ("query_key_value",), "o": ("dense",)}),
    "falcon": AttentionNames("Falcon", "h.{i}.self_attention.", {"qkv": ("query_key_value",), "o": ("dense",)}),
    "phi3": AttentionNames("Phi-3", "layers.{i}.self_attn.", {"qkv": ("qkv_proj",), "o": ("o_proj",)}),
}
"""Layout name (the style megarank-rank records) -> its attention names, in the order the reader tries them."""
