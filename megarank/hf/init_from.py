"""train.init_from: a run's starting weights from a megarank checkpoint or a local Hugging Face directory.

    source = InitSource.open(path)          metadata only: which kind, the model keys it fixes
    cfg = source.configure(cfg)             the model section's shape keys from the source (conflicts: one line)
    source.check_data(data.identity)        the run's tokenizer is the source's, where both record it
    state = source.read_weights(cfg.model)  the whole (TP=1) state dict, megarank's names

The loop loads `state` into the freshly built model before tensor parallelism slices it and ZeRO-3 partitions
it (megarank/train/loop.py), so any layout starts from the same weights. Weights only: the optimizer, the LR
schedule and the data position start fresh.

"Given by the user" is decided simply: a model key whose value differs from the schema's default
(ModelConfig()) was given; one left at its default takes the source's value silently. So a config that sets
model.d_model=768 (the default) for a 512-wide source is not caught; one that sets 512 or 1024 is.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from megarank.config.schema import ExperimentConfig, ModelConfig
from megarank.errors import MegarankError
from megarank.hf.layouts import LLAMA_OPTIONS, from_hf_state, import_layout, model_keys, nonzero_bias

SHAPE_KEYS = ("family", "n_layers", "d_model", "n_heads", "d_ff", "vocab_size", "position", "rope_base", "bias",
              "tie_embeddings", "norm_eps", "max_positions",
              *LLAMA_OPTIONS)
"""The model keys a megarank source fixes; the others (seq_len, dropout, attn_backend, init_std, ...) stay the
run's own."""


@dataclass(frozen=True)
class InitSource:
    path: Path
    """The megarank tag or the HF directory."""
    kind: str
    """'megarank' or 'hf'."""
    keys: dict
    """The megarank model keys the source fixes."""
    tokenizer_sha256: str | None
    """The source's tokenizer, where it records one."""

    @classmethod
    def open(cls, path: str | Path) -> InitSource:
        """The source at `path`; one line when it is neither a megarank checkpoint nor an HF directory."""
        from megarank.ckpt.resolve import looks_like_checkpoint

        path = Path(path).expanduser()
        if looks_like_checkpoint(path):
            return cls._megarank(path)
        if (path / "config.json").is_file():
            return cls._hf(path)
        raise MegarankError(f"train.init_from '{path}' is neither a megarank checkpoint (run dir, checkpoint dir or "
                            "global_step<N> tag) nor a Hugging Face directory with config.json")

    @classmethod
    def _megarank(cls, path: Path) -> InitSource:
        from megarank.ckpt.marker import Marker
        from megarank.ckpt.resolve import resolve_tag

        tag_dir = resolve_tag(path)
        marker = Marker.read(tag_dir)
        if marker.family != "gpt":
            raise MegarankError(f"train.init_from '{tag_dir}' is a {marker.family} checkpoint; init_from starts GPTs")
        source = marker.model_config()
        keys = {key: getattr(source, key) for key in SHAPE_KEYS}
        keys["d_ff"] = source.ffn_dim
        if source.position == "learned":
            keys["max_positions"] = source.max_positions or source.seq_len
        return cls(tag_dir, "megarank", keys, marker.data.get("tokenizer_sha256"))

    @classmethod
    def _hf(cls, path: Path) -> InitSource:
        from megarank.data.tokenizer import model_sha256

        config = _read_json(path / "config.json")
        layout = import_layout(config, str(path))
        keys = model_keys(layout, config, nonzero_bias=nonzero_bias(_hf_tensors(path, biases_only=True), layout))
        tokenizer = path / "tokenizer.model"  # a megarank export keeps the SentencePiece model
        return cls(path, "hf", keys, model_sha256(tokenizer) if tokenizer.is_file() else None)

    def configure(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """cfg with the source's model keys; a key the user set to another value is a one-line error."""
        defaults = ModelConfig()
        for key, value in self.keys.items():
            given = getattr(cfg.model, key)
            if given != getattr(defaults, key) and given != value:
                raise MegarankError(f"model.{key}={given} conflicts with train.init_from '{self.path}', whose model has "
                                    f"{key}={value}; drop model.{key} (the model comes from init_from)")
        try:
            return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **self.keys))
        except MegarankError as err:
            raise MegarankError(f"with train.init_from '{self.path}': {err}") from None

    def check_data(self, identity: dict) -> None:
        """The run's data must be tokenized with the source's tokenizer, where both record it."""
        ours = identity.get("tokenizer_sha256")
        if self.tokenizer_sha256 and ours and ours != self.tokenizer_sha256:
            raise MegarankError(f"train.init_from '{self.path}' was trained with tokenizer sha256 "
                                f"{self.tokenizer_sha256[:12]}, this run's data is tokenized with {ours[:12]}; train "
                                "on data made with the source's tokenizer")

    def read_weights(self, model: ModelConfig) -> dict[str, torch.Tensor]:
        """The source's whole state dict (megarank names, a tied head included) for the GPT of `model`."""
        if self.kind == "megarank":
            from megarank.evaluation.load import load_gpt

            return load_gpt(self.path).model.state_dict()
        config = _read_json(self.path / "config.json")
        layout = import_layout(config, str(self.path))
        return from_hf_state(layout, model, _hf_tensors(self.path), str(self.path))


def _read_json(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MegarankError(f"'{path}' cannot be read as JSON ({err})") from None
    if not isinstance(document, dict):
        raise MegarankError(f"'{path}' is not a JSON object")
    return document


def _hf_tensors(path: Path, *, biases_only: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an HF directory's model.safetensors (or its sharded index), GPT-2's bare names (saved
    from GPT2Model) under 'transformer.'."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({path / name for name in _read_json(index).get("weight_map", {}).values()})
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        raise MegarankError(f"'{path}' has no model.safetensors (nor an index of them); megarank reads Hugging Face "
                            "weights as safetensors only")
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys() if not biases_only or name.endswith(".bias")})
    if tensors and not any(name.startswith(("transformer.", "model.", "lm_head.")) for name in tensors):
        tensors = {f"transformer.{name}": t for name, t in tensors.items()}  # GPT2Model's own save
    return tensors
