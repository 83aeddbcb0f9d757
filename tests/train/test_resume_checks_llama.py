"""Resuming with a changed LLaMA option is refused in one line naming the key and the saved value, against the
real completion markers of the tiny LLaMA run and of the tiny GPT reference: model.norm (LayerNorm without bias
and RMSNorm hold tensors of the same shapes, so only this check stops the swap), model.mlp at the same width,
model.n_kv_heads, model.qk_norm and model.ffn_multiple at the same width; a GPT marker whose config predates the
options (as the landed main wrote it) reads as their defaults: the same run resumes, an RMSNorm one is refused."""

from __future__ import annotations

import json
import re

import pytest

from megarank.ckpt.tags import COMPLETE_MARKER
from megarank.config import load_config
from megarank.errors import MegarankError
from megarank.train.resume_checks import check_resume

NO_DATA: dict[str, str] = {}  # the data identity is tests/train/test_resume_checks.py's subject


@pytest.mark.parametrize("overrides, expected", [
    (["model.norm=layernorm"], "trained with model.norm=rmsnorm; this run has layernorm — resume with model.norm=rmsnorm"),
    (["model.mlp=gelu", "model.d_ff=96"], "trained with model.mlp=swiglu; this run has gelu"),
    (["model.n_kv_heads=4"], "trained with model.n_kv_heads=2; this run has 4"),
    (["model.n_kv_heads=null"], "trained with model.n_kv_heads=2; this run has 4"),
    (["model.qk_norm=false"], "trained with model.qk_norm=true; this run has false"),
    (["model.ffn_multiple=32"], "trained with model.ffn_multiple=16; this run has 32"),  # width 96 either way
])
def test_changed_llama_options_are_refused(launched, overrides, expected):
    run = launched("llama-reference")
    config, tag = run / "config.yaml", run / "checkpoints" / "global_step4"
    check_resume(tag, load_config(config), NO_DATA)
    with pytest.raises(MegarankError) as err:
        check_resume(tag, load_config(config, overrides), NO_DATA)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_marker_from_before_the_options_reads_as_the_gpt(reference_run, tmp_path):
    marker = json.loads((reference_run / "checkpoints" / "global_step4" / COMPLETE_MARKER).read_text())
    old = re.sub(r"\n  (norm|mlp|ffn_multiple|n_kv_heads|qk_norm): [^\n]*", "", marker["config"])
    assert "rmsnorm" not in old and "norm: layernorm" not in old and old != marker["config"]
    tag = tmp_path / "global_step4"
    tag.mkdir()
    (tag / COMPLETE_MARKER).write_text(json.dumps({**marker, "config": old, "files": None}))
    config = reference_run / "config.yaml"
    check_resume(tag, load_config(config), NO_DATA)
    with pytest.raises(MegarankError, match="trained with model.norm=layernorm; this run has rmsnorm"):
        check_resume(tag, load_config(config, ["model.norm=rmsnorm"]), NO_DATA)
