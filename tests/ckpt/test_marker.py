"""The completion marker (megarank/ckpt/marker.py) against what was written: a Marker written and read back is
the same Marker, its tensor records those of megarank/models/roles.py for a real model; a marker from before
tensor records (or data, or file records) still reads, each tensor's role then taken from the roles table by
name; the run's config comes back as the schema's dataclasses (today's defaults for keys added since); and a
bad file is one MarkerError line naming it."""

from __future__ import annotations

import json

import pytest
import yaml

from megarank.ckpt.marker import COMPLETE_MARKER, Layout, Marker, MarkerError, TensorRecord
from megarank.config.schema import ModelConfig, OptimConfig
from megarank.models.gpt import GPT
from megarank.models.roles import role_of, tensor_records

MODEL = {"family": "gpt", "n_layers": 2, "d_model": 32, "n_heads": 4, "seq_len": 16, "vocab_size": 256,
         "position": "rotary", "rope_base": 500.0}
CONFIG = yaml.safe_dump({"seed": 7, "model": MODEL, "optim": {"wd_attn": 0.1, "wd_mlp": 0.05, "wd_other": 0.01,
                                                              "decoupled": False},
                         "train": {"precision": "bf16"}, "data": {"path": "/data"}})


def written(tag_dir, document: dict):
    tag_dir.mkdir(parents=True, exist_ok=True)
    (tag_dir / COMPLETE_MARKER).write_text(json.dumps(document))
    return tag_dir


def old_marker() -> dict:
    """A marker as the landed main wrote it: no tensor records."""
    return {"step": 4, "time": 1.5, "layout": {"tp": 2, "dp": 1, "world_size": 2}, "zero_stage": 1,
            "config": CONFIG, "data": {"tokenizer_sha256": "ab" * 32},
            "files": {"mp_rank_00_model_states.pt": {"size": 10, "sha256": "0" * 64}}}


def test_written_marker_reads_back_the_same(tmp_path):
    model = GPT(ModelConfig(**MODEL))
    records = tensor_records(model)  # the whole model: its shapes are the global ones
    marker = Marker.from_json({**old_marker(), "tensors": records})
    marker.write(tmp_path)
    again = Marker.read(tmp_path)
    assert again == marker and again.where == tmp_path / COMPLETE_MARKER
    assert json.loads((tmp_path / COMPLETE_MARKER).read_text())["tensors"] == records
    # the records are the roles table's, shapes global: wte's rows are the whole (padded) vocabulary
    assert again.tensor_record("wte.weight") == TensorRecord("embedding", "other", "vocab", (256, 32))
    assert again.tensor_record("blocks.1.attn.o_proj.weight").tp_style == "row"
    with pytest.raises(MarkerError, match="records no tensor 'lm_head.weight'"):  # tied: saved as wte
        again.tensor_record("lm_head.weight")
    assert again.n_bytes == 10 and again.layout == Layout(tp=2, dp=1, world_size=2)


def test_marker_without_tensor_records_falls_back_to_the_roles_table(tmp_path):
    marker = Marker.read(written(tmp_path, old_marker()))
    assert marker.tensors is None
    for name in ("blocks.0.attn.q_proj.weight", "blocks.1.mlp.fc_out.weight", "wte.weight", "ln_f.weight"):
        role = role_of(name)
        assert marker.tensor_record(name) == TensorRecord(role.name, role.decay_group, role.tp_style, None)
    # older still: no data, no file records, no time, no world_size
    bare = {key: old_marker()[key] for key in ("step", "zero_stage", "config")} | {"layout": {"tp": 1, "dp": 2}}
    marker = Marker.read(written(tmp_path / "older", bare))
    assert marker.files is None and marker.n_bytes is None and marker.data == {} and marker.layout.world_size == 2


def test_config_comes_back_as_the_schema(tmp_path):
    marker = Marker.read(written(tmp_path, old_marker()))
    assert (marker.family, marker.n_layers, marker.d_model, marker.n_heads) == ("gpt", 2, 32, 4)
    assert marker.seed == 7 and marker.precision == "bf16" and marker.section("data") == {"path": "/data"}
    # no 'decay' record (written before it): the configured decay, W_Q, W_K and W_V, W_O at wd_attn
    assert marker.decay == {"wd_attn": 0.1, "wd_qk": 0.1, "wd_ov": 0.1, "wd_mlp": 0.05, "wd_other": 0.01,
                            "decoupled": False}
    assert marker.group_layout == ("no_decay", "attn", "mlp", "other")  # from its config
    model = marker.model_config()
    assert model == ModelConfig(**MODEL)  # keys the marker lacks take today's defaults
    assert marker.model_config(dropout=0.0, attn_backend="sdpa").attn_backend == "sdpa"
    assert marker.model_config().attn_backend == "auto"  # nothing is mutated
    assert marker.optim_config() == OptimConfig(wd_attn=0.1, wd_mlp=0.05, wd_other=0.01, decoupled=False)


def test_decay_in_effect_is_what_the_marker_records(tmp_path):
    """A marker's 'decay' (what its last step applied, optim/decay.py) wins over the configured decay, and its
    'decay_groups' over its config's layout; both survive a write and read."""
    document = old_marker() | {"decay": {"no_decay": 0.0, "qk": 0.0, "ov": 0.1, "mlp": 0.05, "other": 0.01},
                               "decay_groups": ["no_decay", "qk", "ov", "mlp", "other"]}
    marker = Marker.read(written(tmp_path, document))
    assert marker.decay == {"wd_attn": None, "wd_qk": 0.0, "wd_ov": 0.1, "wd_mlp": 0.05, "wd_other": 0.01,
                            "decoupled": False}
    assert marker.group_layout == ("no_decay", "qk", "ov", "mlp", "other")
    (tmp_path / "again").mkdir()
    marker.write(tmp_path / "again")
    assert Marker.read(tmp_path / "again").decay_in_effect == document["decay"]
    switched_off = old_marker() | {"decay": {"no_decay": 0.0, "attn": 0.0, "mlp": 0.05, "other": 0.01}}
    assert Marker.read(written(tmp_path / "off", switched_off)).decay["wd_attn"] == 0.0


@pytest.mark.parametrize("content, reason", [
    ('{"step": 4, ', "cannot be read as a checkpoint marker"),
    ("[1, 2]", "is not a checkpoint marker (a JSON object)"),
    ('{"step": 4, "zero_stage": 1}', "is not a valid megarank checkpoint marker (no valid 'layout')"),
    ('{"step": "x", "zero_stage": 1, "layout": {"tp": 1, "dp": 1}}', "is not a valid megarank checkpoint marker"),
    ('{"step": 4, "zero_stage": 1, "layout": {"tp": 1, "dp": 1}, "tensors": {"a": {"role": "q"}}}',
     "has a malformed 'tensors' record"),
])
def test_a_bad_marker_is_one_line_naming_it(tmp_path, content, reason):
    (tmp_path / COMPLETE_MARKER).write_text(content)
    with pytest.raises(MarkerError) as caught:
        Marker.read(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"'{tmp_path / COMPLETE_MARKER}' {reason}") and "\n" not in message
    with pytest.raises(MarkerError, match="cannot be read as a checkpoint marker"):
        Marker.read(tmp_path / "missing")


def test_a_bad_config_fails_when_read(tmp_path):
    no_config = Marker.read(written(tmp_path / "a", {k: v for k, v in old_marker().items() if k != "config"}))
    assert no_config.step == 4  # the layout alone reads (resume's layout checks need no more)
    with pytest.raises(MarkerError, match="records no config"):
        no_config.model_config()
    broken = Marker.read(written(tmp_path / "b", {**old_marker(), "config": CONFIG.replace("n_heads: 4", "n_heads: 3")}))
    with pytest.raises(MarkerError, match="has a model config that cannot be rebuilt .*not divisible"):
        broken.model_config()
