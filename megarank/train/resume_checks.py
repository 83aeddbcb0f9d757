"""What a resumed run may change against its checkpoint, and what it may not.

May change: the process layout (other data-parallel sizes go through the universal checkpoint), micro and
global batch (the data continues from the samples consumed, saved in the checkpoint; the LR schedule stays
in optimizer steps, as Megatron keeps its iteration count), max_steps, logging, evaluation, checkpoint
cadence, optim.lr (a lower peak after a divergence is the usual reason to resume; optim/schedule.py
follow_configured_peak applies it), and the weight decay (optim.wd_attn, wd_qk, wd_ov, wd_mlp, wd_other and the
decay schedule: the train loop sets every group's decay before each step, optim/decay.py, so the new values
apply from the resume step, and the run's log and metrics.jsonl say what changed) — as long as the optimizer's
groups stay the same.

May not: the model's shape (DeepSpeed would fail to load the weights with a traceback) or its function
(model.norm_eps, model.norm — LayerNorm without bias and RMSNorm hold the same one gain per feature —,
model.mlp, model.n_kv_heads, model.qk_norm, model.ffn_multiple under SwiGLU, and model.rope_base under rotary
positions: the same weights would load into another function, or fail to load with a traceback), the sequence length, the training data and its tokenizer, the seed (the saved data position would
point at other samples), optim.decoupled (AdamW against Adam + L2 is another update rule, not another decay:
the saved Adam moments of an L2 run hold the decay's gradient, those of an AdamW run do not, so neither run's
statistics continue the other's), Adam's optim.beta1, beta2 and eps (DeepSpeed loads them back from the saved
optimizer state, where the loop resets only the learning rate and the decay each step: a new value would show in
config.yaml while the old one kept running), and the optimizer's group layout (one attn group, or qk and ov when W_Q, W_K and
W_V, W_O decay differently, optim/groups.py: DeepSpeed's ZeRO 1-3 flatten each group's tensors, and optimizer
state saved under one layout cannot be loaded into another; train.init_from starts a new run from the weights
with a fresh optimizer). Each is refused in one line naming the key and the saved value, before the checkpoint
is loaded. Read off the checkpoint's marker (megarank/ckpt/marker.py), whose
resolved config every marker carries, old ones included.
"""

from __future__ import annotations

from pathlib import Path

from megarank.ckpt.marker import Marker
from megarank.config.schema import ExperimentConfig, ModelConfig, OptimConfig
from megarank.errors import MegarankError
from megarank.optim.groups import splits_attention

_BLOCK_KEYS = ("norm", "mlp", "kv_heads", "qk_norm")  # the block's options: checkpoints from before them read as
# today's defaults (model_config() fills keys added since), which are the block they were trained with
_GPT_KEYS = ("n_layers", "d_model", "n_heads", "ffn_dim", "vocab_size", "seq_len", "position_table", "position",
             "bias", "tie_embeddings", "norm_eps", *_BLOCK_KEYS)
_VIT_KEYS = ("n_layers", "d_model", "n_heads", "ffn_dim", "image_size", "patch_size", "in_channels", "n_classes",
             "pooling", "patch_embed", "position", "bias", "norm_eps", *_BLOCK_KEYS)
_OPTIM_KEYS = ("decoupled", "beta1", "beta2", "eps")
# data_identity keys (TokenShards.tokenizer_sha256 / content_sha256 of the training shards), tokenizer first:
# re-tokenized data changes both, and the tokenizer is the more useful thing to name
_DATA_KEYS = {"tokenizer_sha256": "data made with tokenizer sha256", "train_sha256": "training shards with sha256"}


def fixed_settings(seed: int, model: ModelConfig, optim: OptimConfig) -> dict[str, object]:
    """The settings a resume must keep, by config key (derived ones, such as the MLP width a None d_ff implies,
    by the key a user sets to change them)."""
    keys = _VIT_KEYS if model.family == "vit" else _GPT_KEYS
    derived = {"ffn_dim": ("model.d_ff", model.ffn_dim),
               "position_table": ("model.max_positions", model.max_positions or model.seq_len),
               "kv_heads": ("model.n_kv_heads", model.kv_heads)}
    settings: dict[str, object] = {"seed": seed, "model.family": model.family}
    for key in keys:
        name, value = derived[key] if key in derived else (f"model.{key}", getattr(model, key))
        settings[name] = value
    if model.position == "rotary":  # unused by learned positions
        settings["model.rope_base"] = model.rope_base
    if model.mlp == "swiglu":  # rounds SwiGLU's default width only
        settings["model.ffn_multiple"] = model.ffn_multiple
    settings.update({f"optim.{key}": getattr(optim, key) for key in _OPTIM_KEYS})
    return settings


def check_resume(tag_dir: Path, cfg: ExperimentConfig, data_identity: dict[str, str]) -> None:
    """Refuse a resume that changes what the checkpoint at tag_dir was trained with, read off its completion
    marker: its config and 'data' (the task's data_identity at save time; checkpoints written before it was
    recorded are checked on the config alone)."""
    marker = Marker.read(tag_dir)
    ours = fixed_settings(cfg.seed, cfg.model, cfg.optim)
    theirs = fixed_settings(marker.seed, marker.model_config(), marker.optim_config())
    fix = "or start a new train.run_dir"
    for key, value in theirs.items():
        if ours.get(key) != value:
            raise MegarankError(f"checkpoint {tag_dir.name} was trained with {key}={_show(value)}; this run has "
                                f"{_show(ours.get(key))} — resume with {key}={_show(value)} {fix}")
    _check_group_layout(tag_dir, marker, cfg.optim)
    for key, what in _DATA_KEYS.items():
        before, now = marker.data.get(key), data_identity.get(key)
        if before is not None and now is not None and before != now:
            raise MegarankError(f"checkpoint {tag_dir.name} was trained on {what} {before[:12]}; this run's data "
                                f"({cfg.data.path or 'the embedded corpus'}) has {now[:12]} — resume with the data "
                                f"it was trained on {fix}")


def _check_group_layout(tag_dir: Path, marker: Marker, optim: OptimConfig) -> None:
    theirs, ours = "qk" in marker.group_layout, splits_attention(optim)
    if theirs != ours:
        saved = "separate qk and ov groups" if theirs else "one attn group"
        now = ("splits it into qk and ov (optim.wd_qk != optim.wd_ov, or a decay schedule on one of them)" if ours
               else "has one attn group (W_Q, W_K and W_V, W_O decay alike)")
        raise MegarankError(f"checkpoint {tag_dir.name} saved its optimizer with {saved}; this run {now} — keep "
                            f"the checkpoint's grouping to resume, or start a new train.run_dir with "
                            f"train.init_from={tag_dir} (its weights, a fresh optimizer)")


def _show(value: object) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
