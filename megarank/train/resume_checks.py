"""What a resumed run may change against its checkpoint, and what it may not.

May change: the process layout (other data-parallel sizes go through the universal checkpoint), micro and
global batch (the data continues from the samples consumed, saved in the checkpoint; the LR schedule stays
in optimizer steps, as Megatron keeps its iteration count), max_steps, logging, evaluation, checkpoint
cadence, and optim.lr (a lower peak after a divergence is the usual reason to resume; optim/schedule.py
follow_configured_peak applies it).

May not: the model's shape (DeepSpeed would fail to load the weights with a traceback, or load them into
another function), the sequence length, the training data and its tokenizer, and the seed (the saved data
position would point at other samples). Each is refused in one line naming the key and the saved value,
before the checkpoint is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from megarank.config.schema import ExperimentConfig, ModelConfig
from megarank.errors import MegarankError
from megarank.train.checkpoint import COMPLETE_MARKER

_GPT_KEYS = ("n_layers", "d_model", "n_heads", "ffn_dim", "vocab_size", "seq_len", "position_table", "position",
             "bias", "tie_embeddings")
_VIT_KEYS = ("n_layers", "d_model", "n_heads", "ffn_dim", "image_size", "patch_size", "in_channels", "n_classes",
             "pooling", "patch_embed", "position")
# data_identity keys (TokenShards.tokenizer_sha256 / content_sha256 of the training shards), tokenizer first:
# re-tokenized data changes both, and the tokenizer is the more useful thing to name
_DATA_KEYS = {"tokenizer_sha256": "data made with tokenizer sha256", "train_sha256": "training shards with sha256"}


def fixed_settings(cfg: ExperimentConfig) -> dict[str, object]:
    """The settings a resume must keep, by config key (derived ones, such as the MLP width a None d_ff implies,
    by the key a user sets to change them)."""
    model = cfg.model
    keys = _VIT_KEYS if model.family == "vit" else _GPT_KEYS
    derived = {"ffn_dim": ("model.d_ff", model.ffn_dim),
               "position_table": ("model.max_positions", model.max_positions or model.seq_len)}
    settings: dict[str, object] = {"seed": cfg.seed, "model.family": model.family}
    for key in keys:
        name, value = derived[key] if key in derived else (f"model.{key}", getattr(model, key))
        settings[name] = value
    return settings


def check_resume(tag_dir: Path, cfg: ExperimentConfig, data_identity: dict[str, str]) -> None:
    """Refuse a resume that changes what the checkpoint at tag_dir was trained with, read off its completion
    marker: 'config' (YAML) and 'data' (the task's data_identity at save time; checkpoints written before it
    was recorded are checked on the config alone)."""
    saved = json.loads((tag_dir / COMPLETE_MARKER).read_text())
    saved_cfg = _saved_config(saved["config"])
    ours, theirs = fixed_settings(cfg), fixed_settings(saved_cfg)
    fix = "or start a new train.run_dir"
    for key, value in theirs.items():
        if ours[key] != value:
            raise MegarankError(f"checkpoint {tag_dir.name} was trained with {key}={_show(value)}; this run has "
                                f"{_show(ours[key])} — resume with {key}={_show(value)} {fix}")
    for key, what in _DATA_KEYS.items():
        before, now = saved.get("data", {}).get(key), data_identity.get(key)
        if before is not None and now is not None and before != now:
            raise MegarankError(f"checkpoint {tag_dir.name} was trained on {what} {before[:12]}; this run's data "
                                f"({cfg.data.path or 'the embedded corpus'}) has {now[:12]} — resume with the data "
                                f"it was trained on {fix}")


def _saved_config(yaml_text: str) -> ExperimentConfig:
    """The saved config as the schema's dataclasses, with today's defaults for keys added since it was written."""
    tree = yaml.safe_load(yaml_text) or {}
    model = {k: v for k, v in tree.get("model", {}).items() if k in ModelConfig.__dataclass_fields__}
    return ExperimentConfig(seed=tree.get("seed", ExperimentConfig.seed), model=ModelConfig(**model))


def _show(value: object) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
