"""The GPT of a megarank checkpoint, whole (TP=1) on one device, rebuilt offline from any training layout.

Which tag: megarank_ckpt.resolve_tag (a run dir, its checkpoint dir, or one global_step<N> tag).
Which weights: megarank_ckpt.MegarankCheckpoint reads every parameter of each TP rank, as megarank-rank reads
the attention weights: the module's weights as trained (default; under ZeRO-3 gathered from the partitions by
DeepSpeed's zero_to_fp32 and rounded to the module's dtype) or ZeRO's fp32 master copy. The TP shards are
concatenated by the style param_shard_styles reads off TP_PLAN: column and vocab split dim 0, row dim 1,
replicated ones taken from rank 0. So the model is the same tensors whatever the TP size, DP size or ZeRO stage.

The GPT is built from the checkpoint's own resolved config, so its vocabulary is the padded one the run trained
(padded ids are never targets, but their logits stay in the softmax, as in training). It runs in fp32 whatever
the training precision (bf16 weights are exact in fp32), with SDPA attention (flash_attn needs bf16) and
dropout off. No process group, no DeepSpeed engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from megarank.analysis.readers.megarank_ckpt import MegarankCheckpoint, looks_like, read_marker, resolve_tag
from megarank.ckpt.tags import COMPLETE_MARKER
from megarank.config.schema import ModelConfig
from megarank.errors import MegarankError
from megarank.models.gpt import GPT
from megarank.parallel.tensor_parallel import param_shard_styles

_SPLIT_DIM = {"column": 0, "vocab": 0, "row": 1}  # "replicated": whole on every TP rank


@dataclass(frozen=True)
class LoadedGPT:
    """A checkpoint's GPT, ready for inference, and where it came from."""

    model: GPT
    tag_dir: Path
    step: int
    layout: dict  # {'tp', 'dp', 'zero_stage'} of the run that wrote it
    config: dict  # the run's resolved config (its YAML, parsed)


def open_checkpoint(path: str | Path) -> tuple[Path, dict, dict]:
    """(tag dir, marker summary, resolved config) of the GPT checkpoint `path` designates; checks only metadata."""
    path = Path(path).expanduser()
    if not looks_like(path):
        raise MegarankError(f"'{path}' is not a megarank checkpoint: pass a run dir, its checkpoint dir or a "
                            "global_step<N> tag")
    tag_dir = resolve_tag(path)
    marker_path = tag_dir / COMPLETE_MARKER
    meta = read_marker(marker_path)
    if meta["family"] != "gpt":
        raise MegarankError(f"'{tag_dir}' is a {meta['family']} checkpoint; perplexity needs a GPT (a ViT is "
                            "measured by its val_acc)")
    config = yaml.safe_load(json.loads(marker_path.read_text())["config"])
    return tag_dir, meta, config


def model_config(config: dict, where: Path) -> ModelConfig:
    """The run's ModelConfig, through the schema (so its checks run), set up for evaluation."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), config["model"]))
    except (OmegaConfBaseException, KeyError, TypeError, ValueError, MegarankError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MegarankError(f"'{where}': its model config cannot be rebuilt ({first})") from None
    if cfg.vocab_size is None:
        raise MegarankError(f"'{where}': its config has no model.vocab_size; not written by megarank-train")
    cfg.attn_backend, cfg.dropout = "sdpa", 0.0  # the same function; flash_attn would need bf16
    return cfg


def load_gpt(path: str | Path, *, weights: str = "module", device: str | torch.device = "cpu") -> LoadedGPT:
    """The checkpoint's GPT at TP=1 in eval mode on `device`; every parameter checked against the config."""
    tag_dir, meta, config = open_checkpoint(path)
    model = GPT(model_config(config, tag_dir / COMPLETE_MARKER))
    styles = param_shard_styles(model)  # one entry per parameter; a tied lm_head appears as wte only
    params = dict(model.named_parameters())
    state = {}
    with MegarankCheckpoint(tag_dir, weights=weights, names=list(styles)) as ckpt:
        for name, style in styles.items():
            shards = [ckpt.tensor(t, name) for t in range(ckpt.tp)]
            whole = shards[0] if style == "replicated" else torch.cat(shards, dim=_SPLIT_DIM[style])
            if whole.shape != params[name].shape:
                raise MegarankError(f"'{tag_dir}': '{name}' ({style}, {ckpt.tp} TP shards) merges to "
                                    f"{tuple(whole.shape)}, its config's GPT has {tuple(params[name].shape)}")
            state[name] = whole
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - set(params)
    assert not unexpected and set(missing) <= tied, (missing, unexpected)  # the state was built from the model
    model.to(device).eval()
    return LoadedGPT(model=model, tag_dir=tag_dir, step=meta["step"], config=config,
                     layout={"tp": meta["tp"], "dp": meta["dp"], "zero_stage": meta["zero_stage"]})
