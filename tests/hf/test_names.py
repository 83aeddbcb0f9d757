"""megarank/hf/names.py, the one table of HF attention names, against its two readers: every attention tensor the
converter (megarank/hf/layouts.py) writes for GPT-2, Llama and Qwen3 is found by megarank-rank's reader
(megarank/analysis/readers/hf_layouts.py) as the slot it fills, under the family's own prefix, and nothing else
the converter writes is taken for an attention weight."""

from __future__ import annotations

import pytest

from megarank.analysis.readers.hf_layouts import LAYOUTS
from megarank.config.schema import ModelConfig
from megarank.hf.layouts import GPT2, LLAMA, QWEN3
from megarank.hf.names import ATTENTION

LLAMA_OPTIONS = dict(position="rotary", norm="rmsnorm", mlp="swiglu", n_kv_heads=2)


@pytest.mark.parametrize("layout, style, options", [(GPT2, "gpt2", {}), (LLAMA, "llama", LLAMA_OPTIONS),
                                                    (QWEN3, "llama", {**LLAMA_OPTIONS, "qk_norm": True})],
                         ids=["gpt2", "llama", "qwen3"])
def test_the_converters_attention_names_are_the_readers(layout, style, options):
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, seq_len=16, vocab_size=64, bias=True, **options)
    reader = next(r for r in LAYOUTS if r.name == style)
    found = {}
    for hf_name, ours, _ in layout.rules(cfg):
        match = reader.pattern.match(hf_name)
        if match:
            found[(int(match["layer"]), reader.slot(match["tensor"]))] = (match["prefix"], ours)
    prefix = "transformer." if style == "gpt2" else "model."
    for i in range(cfg.n_layers):
        for slot in ATTENTION[style].modules:
            roles = "qkv" if slot == "qkv" else slot
            assert found[(i, slot)] == (prefix, tuple(f"blocks.{i}.attn.{r}_proj.weight" for r in roles))
    assert len(found) == cfg.n_layers * len(ATTENTION[style].modules)
