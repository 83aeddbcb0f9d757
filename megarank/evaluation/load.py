"""The GPT of a megarank checkpoint, whole (TP=1) on one device, rebuilt offline from any training layout.

Which tag: megarank/ckpt/resolve.py (a run dir, its checkpoint dir, or one global_step<N> tag).
Which weights: megarank/ckpt/shards.py reads every parameter of each TP rank: the module's weights as trained
(default; under ZeRO-3 gathered from the partitions by DeepSpeed's zero_to_fp32 and rounded to the module's
dtype) or ZeRO's fp32 master copy. The TP shards are merged by the TP style the marker records for each tensor
(column and vocab split dim 0, row dim 1, replicated ones taken from rank 0; a marker written before tensor
records: the style of the name's role in megarank/models/roles.py). So the model is the same tensors whatever
the TP size, DP size or ZeRO stage.

The GPT is built from the checkpoint's own resolved config, so its vocabulary is the padded one the run trained
(padded ids are never targets, but their logits stay in the softmax, as in training). It runs in fp32 whatever
the training precision (bf16 weights are exact in fp32), with SDPA attention (flash_attn needs bf16) and
dropout off. No process group, no DeepSpeed engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megarank.ckpt.marker import Marker
from megarank.ckpt.resolve import looks_like_checkpoint, resolve_tag
from megarank.ckpt.shards import CheckpointShards
from megarank.config.schema import ModelConfig
from megarank.errors import MegarankError
from megarank.models.gpt import GPT


@dataclass(frozen=True)
class LoadedGPT:
    """A checkpoint's GPT, ready for inference, and where it came from."""

    model: GPT
    tag_dir: Path
    marker: Marker

    @property
    def step(self) -> int:
        return self.marker.step

    @property
    def layout(self) -> dict:
        """{'tp', 'dp', 'zero_stage'} of the run that wrote it."""
        return {"tp": self.marker.layout.tp, "dp": self.marker.layout.dp, "zero_stage": self.marker.zero_stage}


def open_checkpoint(path: str | Path) -> tuple[Path, Marker]:
    """(tag dir, marker) of the GPT checkpoint `path` designates; checks only metadata."""
    path = Path(path).expanduser()
    if not looks_like_checkpoint(path):
        raise MegarankError(f"'{path}' is not a megarank checkpoint: pass a run dir, its checkpoint dir or a "
                            "global_step<N> tag")
    tag_dir = resolve_tag(path)
    marker = Marker.read(tag_dir)
    if marker.family != "gpt":
        raise MegarankError(f"'{tag_dir}' is a {marker.family} checkpoint; perplexity needs a GPT (a ViT is "
                            "measured by its val_acc)")
    return tag_dir, marker


def eval_model_config(marker: Marker) -> ModelConfig:
    """The run's ModelConfig set up for evaluation: the same function, with SDPA (flash_attn would need bf16)
    and no dropout."""
    cfg = marker.model_config(attn_backend="sdpa", dropout=0.0)
    if cfg.vocab_size is None:
        raise MegarankError(f"'{marker.where}': its config has no model.vocab_size; not written by megarank-train")
    return cfg


def load_gpt(path: str | Path, *, weights: str = "module", device: str | torch.device = "cpu") -> LoadedGPT:
    """The checkpoint's GPT at TP=1 in eval mode on `device`; every parameter checked against the config."""
    tag_dir, marker = open_checkpoint(path)
    model = GPT(eval_model_config(marker))
    params = dict(model.named_parameters())  # a tied lm_head appears as wte only
    state = {}
    with CheckpointShards(tag_dir, marker, list(params), weights=weights) as shards:
        for name, param in params.items():
            whole = shards.whole(name)
            if whole.shape != param.shape:
                style = marker.tensor_record(name).tp_style
                raise MegarankError(f"'{tag_dir}': '{name}' ({style}, {shards.tp} TP shards) merges to "
                                    f"{tuple(whole.shape)}, its config's GPT has {tuple(param.shape)}")
            state[name] = whole
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - set(params)
    assert not unexpected and set(missing) <= tied, (missing, unexpected)  # the state was built from the model
    model.to(device).eval()
    return LoadedGPT(model=model, tag_dir=tag_dir, marker=marker)
