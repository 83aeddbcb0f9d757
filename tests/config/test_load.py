"""Config loading against the schema: composition order (parts < file < overrides), typos and wrong types as
one-line errors naming the key, cross-section checks at a given world size."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from megarank.config import gradient_accumulation_steps, load_config, parse_overrides, to_yaml, validate
from megarank.config.load import valid_keys
from megarank.config.schema import ExperimentConfig
from megarank.errors import MegarankError
from tests.helpers import REPO

PUBLIC_KEYS = ["seed", "train.max_steps", "train.micro_batch", "train.global_batch", "train.run_dir", "train.resume",
               "model.n_layers", "model.d_model", "model.n_heads", "model.seq_len", "optim.lr", "optim.wd_attn",
               "optim.wd_mlp", "optim.wd_other", "optim.decoupled", "zero.stage", "checkpoint.every",
               "checkpoint.dir"]


def test_public_names_exist():
    assert set(PUBLIC_KEYS) <= set(valid_keys(ExperimentConfig))


def test_composition_order_and_interpolation(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.yaml").write_text("model: {n_layers: 3, d_model: 64}\noptim: {wd_attn: 0.5}\n")
    (tmp_path / "exp.yaml").write_text("defaults: [parts/a.yaml]\nmodel: {d_model: 128}\ntrain: {run_dir: /r}\n")
    cfg = load_config(tmp_path / "exp.yaml", ["optim.wd_attn=0", "model.n_heads=8"])
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads) == (3, 128, 8)
    assert cfg.optim.wd_attn == 0.0 and cfg.optim.wd_mlp == 0.1
    assert cfg.checkpoint.dir == "/r/checkpoints"
    assert OmegaConf.create(to_yaml(cfg)).model.d_model == 128  # the saved form is the resolved one


def test_default_config_loads():
    cfg = load_config("configs/default.yaml")
    assert cfg.data.path is None and cfg.optim.beta2 == 0.95 and cfg.optim.eps == 1e-8


@pytest.mark.parametrize("override, message", [
    ("optim.wd_atn=0", "unknown config key 'optim.wd_atn' (did you mean 'optim.wd_attn'?)"),
    ("modl.n_layers=2", "(did you mean 'model'?)"),
    ("train.max_steps=ten", "config key 'train.max_steps'"),
    ("optim.decoupled=maybe", "config key 'optim.decoupled'"),
    ("zero.stage=4", "zero.stage must be 0, 1, 2 or 3"),
    ("model.n_heads=5", "not divisible by model.n_heads=5"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(MegarankError) as err:
        load_config("configs/default.yaml", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_overrides_parse_to_nested_yaml_values():
    parsed = parse_overrides(["optim.wd_attn=0", "train.run_dir=/r", "grid.axes=[0, 0.1]", "model.bias=true"])
    assert OmegaConf.to_container(parsed) == {"optim": {"wd_attn": 0}, "train": {"run_dir": "/r"},
                                              "grid": {"axes": [0, 0.1]}, "model": {"bias": True}}
    assert OmegaConf.to_container(parse_overrides([])) == {}


@pytest.mark.parametrize("item, message", [
    ("train.max_steps", "override 'train.max_steps' is not key=value; write e.g. train.max_steps=50"),
    ("=3", "override '=3' is not key=value"),
    ("grid.axes=[0, 1", "override 'grid.axes=[0, 1': while parsing a flow sequence"),
])
def test_bad_overrides_are_one_line_errors(item, message):
    with pytest.raises(MegarankError) as err:
        parse_overrides(["seed=1", item])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(MegarankError, match="bad.yaml' is not valid YAML"):
        load_config(bad)


def test_validate_batch_divisibility():
    cfg = load_config("configs/default.yaml", ["train.micro_batch=4", "train.global_batch=32"])
    assert gradient_accumulation_steps(cfg, world_size=2) == 4
    with pytest.raises(MegarankError, match="multiple of 12"):
        validate(load_config("configs/default.yaml", ["train.micro_batch=4", "train.global_batch=32"]), 3)


@pytest.mark.parametrize("path", sorted(str(p) for p in (REPO / "configs").glob("**/*.yaml")
                                        if p.parent.name in ("configs", "experiments")))
def test_shipped_experiments_load_and_validate(path):
    cfg = load_config(path)
    world = 16 if "16x" in path else 1
    validate(cfg, world)
