"""A config's way to a run: resolve() against what the data says (vocabulary padded, classes filled, channels
checked) returns a new config and leaves its input as it was; validate() then refuses a vocabulary TP cannot
split; frozen() makes every section read-only, and what OmegaConf and dataclasses.replace make of a frozen
config is what they made of the unfrozen one. Compared against values worked out by hand."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from omegaconf import OmegaConf

from megarank.config import DataInfo, ExperimentConfig, frozen, load_config, resolve, to_yaml, validate
from megarank.config.frozen import is_frozen
from megarank.errors import MegarankError


def gpt(*overrides) -> ExperimentConfig:
    return load_config("configs/default.yaml", list(overrides))


def vit(*overrides) -> ExperimentConfig:
    return load_config("configs/vit_default.yaml", list(overrides))


def test_vocabulary_is_padded_to_the_multiple_and_the_input_left_alone():
    cfg = gpt("model.vocab_multiple=128")
    resolved = resolve(cfg, DataInfo(vocab_size=4097))
    assert resolved.model.vocab_size == 4224  # 33 × 128
    assert cfg.model.vocab_size is None and resolved is not cfg and resolved.model is not cfg.model
    assert resolve(cfg, DataInfo(vocab_size=4096)).model.vocab_size == 4096  # a multiple already


def test_configured_vocabulary_is_kept_or_refused():
    assert resolve(gpt("model.vocab_size=5000"), DataInfo(vocab_size=4096)).model.vocab_size == 5000
    with pytest.raises(MegarankError, match=r"model.vocab_size=100 is smaller than the data's tokenizer \(4096\); "
                                            "unset model.vocab_size"):
        resolve(gpt("model.vocab_size=100"), DataInfo(vocab_size=4096))


def test_classes_filled_or_checked_and_channels_checked():
    assert resolve(vit(), DataInfo(n_classes=10, in_channels=1)).model.n_classes == 10
    assert resolve(vit("model.n_classes=12"), DataInfo(n_classes=10, in_channels=1)).model.n_classes == 12
    with pytest.raises(MegarankError, match="model.n_classes=5 but the data has 10 classes"):
        resolve(vit("model.n_classes=5"), DataInfo(n_classes=10, in_channels=1))
    with pytest.raises(MegarankError, match="set model.in_channels=3"):
        resolve(vit("model.in_channels=1"), DataInfo(n_classes=10, in_channels=3))


def test_validate_refuses_a_vocabulary_tp_cannot_split():
    tp2 = gpt("model.vocab_multiple=3", "parallel.tp=2", "train.global_batch=32", "train.micro_batch=16")
    even = resolve(tp2, DataInfo(vocab_size=4096))
    assert even.model.vocab_size == 4098  # 1366 × 3, even: TP=2 splits it
    validate(even, world_size=2)
    odd = resolve(tp2, DataInfo(vocab_size=4099))
    assert odd.model.vocab_size == 4101  # 1367 × 3
    with pytest.raises(MegarankError, match="model.vocab_size=4101 is not divisible by parallel.tp=2; make "
                                            "model.vocab_multiple a multiple of tp"):
        validate(odd, world_size=2)
    validate(tp2, world_size=2)  # not resolved yet: the vocabulary is unknown, nothing to check


def test_a_frozen_config_refuses_every_change():
    cfg = frozen(resolve(gpt(), DataInfo(vocab_size=4096)))
    for section, name, value in [(cfg, "seed", 1), (cfg.model, "vocab_size", 1), (cfg.optim, "wd_attn", 0.0),
                                 (cfg.train, "max_steps", 1), (cfg.parallel, "tp", 2)]:
        with pytest.raises(dataclasses.FrozenInstanceError, match="frozen once resolved"):
            setattr(section, name, value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        del cfg.model.seq_len
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = cfg.model
    assert cfg.model.vocab_size == 4096


def test_freezing_copies_and_leaves_the_original_settable():
    cfg = gpt()
    locked = frozen(cfg)
    cfg.model.n_layers = 3  # the caller's config is not the run's
    assert locked.model.n_layers != 3 and is_frozen(locked.model) and not is_frozen(cfg.model)
    assert is_frozen(copy.deepcopy(locked).train)


def test_frozen_config_serialises_and_replaces_like_the_unfrozen_one():
    cfg = resolve(gpt(), DataInfo(vocab_size=4096))
    locked = frozen(cfg)
    assert to_yaml(locked) == to_yaml(cfg) and "_frozen" not in to_yaml(locked)
    assert dataclasses.asdict(locked) == dataclasses.asdict(cfg)
    assert OmegaConf.to_object(OmegaConf.structured(locked)) == cfg
    changed = dataclasses.replace(locked, seed=7)  # a changed config is a new, settable one
    changed.seed = 8
    assert changed.seed == 8 and locked.seed == cfg.seed
