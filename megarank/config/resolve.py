"""What a config takes from its data: the vocabulary (padded) and the number of classes, checked against what
the data holds. Runs once, after the data is opened and before validate(); returns a new config, leaving the
one it was given as it was."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from megarank.config.schema import ExperimentConfig, ModelConfig
from megarank.errors import MegarankError


@dataclass(frozen=True)
class DataInfo:
    """What the opened data says about the model that can train on it (None: not this data's business)."""

    vocab_size: Optional[int] = None
    """Text: the tokenizer's vocabulary size, as the shards record it."""
    n_classes: Optional[int] = None
    """Images: the number of classes."""
    in_channels: Optional[int] = None
    """Images: channels per image."""


def resolve(cfg: ExperimentConfig, data: DataInfo) -> ExperimentConfig:
    """cfg with model.vocab_size (padded up to model.vocab_multiple) and model.n_classes filled from the data
    where unset, after checking that configured values fit the data (MegarankError naming the fix)."""
    return replace(cfg, model=resolve_model(cfg.model, data))


def resolve_model(model: ModelConfig, data: DataInfo) -> ModelConfig:
    """The model section of resolve(): a new ModelConfig."""
    changes = {}
    if data.vocab_size is not None:
        if model.vocab_size is None:
            changes["vocab_size"] = padded_vocab_size(data.vocab_size, model.vocab_multiple)
        elif model.vocab_size < data.vocab_size:
            raise MegarankError(f"model.vocab_size={model.vocab_size} is smaller than the data's tokenizer "
                                f"({data.vocab_size}); unset model.vocab_size to take it from the data")
    if data.n_classes is not None:
        if model.n_classes is None:
            changes["n_classes"] = data.n_classes
        elif model.n_classes < data.n_classes:
            raise MegarankError(f"model.n_classes={model.n_classes} but the data has {data.n_classes} classes; "
                                "unset model.n_classes to take it from the data")
    if data.in_channels is not None and model.in_channels != data.in_channels:
        raise MegarankError(f"model.in_channels={model.in_channels} but the images have {data.in_channels} "
                            f"channels; set model.in_channels={data.in_channels}")
    return replace(model, **changes)


def padded_vocab_size(data_vocab: int, multiple: int) -> int:
    """data_vocab rounded up to a multiple of `multiple` (Megatron's make-vocab-size-divisible-by)."""
    return -(-data_vocab // multiple) * multiple
