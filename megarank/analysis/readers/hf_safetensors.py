"""Hugging Face safetensors directories: LLaMA-style decoders and BERT-style encoders, read tensor by tensor.

Recognised names, after any prefix ('model.', 'bert.', ...):
    LLaMA-style (LLaMA, Mistral, Qwen2, ...): layers.<i>.self_attn.{q,k,v,o}_proj.weight
        grouped-query attention: k/v_proj have num_key_value_heads heads, each serving several query heads
    BERT-style (BERT, RoBERTa, ...): layer.<i>.attention.self.{query,key,value}.weight and
        layer.<i>.attention.output.dense.weight
Head counts come from config.json (num_attention_heads, num_key_value_heads, head_dim) or --n-heads. HF
stores LLaMA's q/k rows permuted within each head for its rotate-half RoPE; the same permutation of W_Q,h and
W_K,h cancels in W_Q,hᵀW_K,h, so the spectra are those of the original weights.

Files: the weight_map of model.safetensors.index.json when the model is sharded, else every *.safetensors in
the directory. Every shard is opened once up front (safetensors checks that each header covers its file, which
catches truncation) and every shape is checked from the headers alone, before any tensor is read. A layer's
tensors are then read with their shard opened just for them, so the memory map is released after each layer
and resident memory stays at about one layer's attention weights.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError, safe_open

from megarank.analysis.readers import AttentionShard, ModelInfo, WeightSource, check_head_shapes, head_layout
from megarank.errors import MegarankError

INDEX = "model.safetensors.index.json"
ROLES = ("q", "k", "v", "o")
_STYLES = {
    "llama": re.compile(r"^(?P<prefix>(?:.*\.)?)layers\.(?P<layer>\d+)\.self_attn\.(?P<role>[qkvo])_proj\.weight$"),
    "bert": re.compile(r"^(?P<prefix>(?:.*\.)?)layer\.(?P<layer>\d+)\.attention\."
                       r"(?:self\.(?P<role>query|key|value)|output\.(?P<out>dense))\.weight$"),
}
_BERT_ROLE = {"query": "q", "key": "k", "value": "v"}
_EXPECTED = ("LLaMA-style '<prefix>layers.<i>.self_attn.q_proj.weight' or BERT-style "
             "'<prefix>layer.<i>.attention.self.query.weight'")


def looks_like(path: Path) -> bool:
    return path.is_dir() and ((path / INDEX).is_file() or any(path.glob("*.safetensors")))


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as err:
        raise MegarankError(f"'{path}' cannot be read as safetensors: truncated or corrupt ({err})") from None


def _shard_files(root: Path) -> tuple[dict[str, Path], Path]:
    """{tensor name: shard file} and the file that says so (the index, or the directory)."""
    index = root / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise MegarankError(f"'{index}' is not a valid safetensors index ({err})") from None
        files = {name: root / file for name, file in weight_map.items()}
        for file in sorted(set(files.values())):
            if not file.is_file():
                raise MegarankError(f"'{file}' is missing: {INDEX} lists it as a shard; the download or copy is "
                                    "incomplete")
        return files, index
    files = {}
    for file in sorted(root.glob("*.safetensors")):
        with _open(file) as f:
            files.update({name: file for name in f.keys()})
    return files, root


class SafetensorsModel(WeightSource):
    """A Hugging Face model directory, validated on open; layers() reads one layer's four tensors at a time."""

    def __init__(self, root: Path, *, n_heads: int | None = None, prefix: str | None = None):
        files, listing = _shard_files(root)
        self._roles = self._attention_names(files, listing, prefix)  # {layer: {role: name}}
        self._files = files
        shapes, dtypes = {}, set()
        for file in sorted({files[n] for roles in self._roles.values() for n in roles.values()}):
            with _open(file) as f:  # every shard is opened, so truncation surfaces here
                for name in (n for roles in self._roles.values() for n in roles.values() if files[n] == file):
                    tensor = f.get_slice(name)
                    shapes[name] = tuple(tensor.get_shape())
                    dtypes.add(str(tensor.get_dtype()))
        self._check_all_shards(files)
        config = self._read_config(root)
        first = self._roles[0]
        d_model = shapes[first["q"]][1]
        cfg_heads = config.get("num_attention_heads")
        if n_heads is not None and cfg_heads is not None and n_heads != cfg_heads:
            raise MegarankError(f"'{root / 'config.json'}' says num_attention_heads={cfg_heads}, --n-heads says "
                                f"{n_heads}; drop --n-heads")
        heads = n_heads if n_heads is not None else cfg_heads
        if heads is None:
            raise MegarankError(f"'{root}' has no config.json giving num_attention_heads; pass --n-heads")
        where = str(root / "config.json") if cfg_heads is not None else str(root)
        head_dim = config.get("head_dim")
        if head_dim is None:
            head_dim = head_layout(heads, heads, shapes[first["q"]][0], None, where=where)
        kv_heads = config.get("num_key_value_heads") or shapes[first["k"]][0] // max(head_dim, 1)
        head_layout(heads, kv_heads, d_model, head_dim, where=where)
        for layer, roles in self._roles.items():
            check_head_shapes({role: (name, shapes[name]) for role, name in roles.items()}, n_q=heads,
                              n_kv=kv_heads, d_head=head_dim, d_model=d_model, where=str(files[roles["q"]]))
        style = "llama" if first["q"].endswith("q_proj.weight") else "bert"
        self.info = ModelInfo(
            family=str(config.get("model_type", style)), n_layers=len(self._roles), n_heads=heads,
            n_kv_heads=kv_heads, d_model=d_model, d_head=head_dim, source=str(root), format="hf-safetensors",
            details={"style": style, "dtype": sorted(dtypes), "architectures": config.get("architectures"),
                     "shards": len(set(files.values()))})

    @staticmethod
    def _attention_names(files: dict[str, Path], listing: Path, prefix: str | None) -> dict[int, dict[str, str]]:
        found: dict[tuple[str, str], dict[int, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
        for name in files:
            for style, pattern in _STYLES.items():
                match = pattern.match(name)
                if match and (prefix is None or match["prefix"] == prefix):
                    role = match["role"] if style == "llama" else _BERT_ROLE.get(match["role"], "o")
                    found[(style, match["prefix"])][int(match["layer"])][role] = name
        if not found:
            sample = ", ".join(f"'{n}'" for n in list(files)[:3]) or "no tensors"
            raise MegarankError(f"'{listing}': no attention weights recognised (found {sample}); expected "
                                f"{_EXPECTED}" + (f" under prefix '{prefix}'" if prefix is not None else ""))
        if len(found) > 1:
            prefixes = ", ".join(f"'{p}'" for _, p in sorted(found))
            raise MegarankError(f"'{listing}' holds several attention stacks (prefixes {prefixes}); choose one "
                                "with --prefix")
        (_, stack_prefix), layers = next(iter(found.items()))
        for layer in range(max(layers) + 1):
            missing = [role for role in ROLES if role not in layers.get(layer, {})]
            if missing:
                raise MegarankError(f"'{listing}': layer {layer} under '{stack_prefix}' lacks its "
                                    f"{'/'.join(missing)} projection weight; the checkpoint is incomplete")
        return dict(sorted(layers.items()))

    @staticmethod
    def _check_all_shards(files: dict[str, Path]) -> None:
        for file in sorted(set(files.values())):
            with _open(file):
                pass

    @staticmethod
    def _read_config(root: Path) -> dict:
        path = root / "config.json"
        if not path.is_file():
            return {}
        try:
            config = json.loads(path.read_text())
        except ValueError as err:
            raise MegarankError(f"'{path}' is not valid JSON ({err})") from None
        return config if isinstance(config, dict) else {}

    def layers(self) -> Iterator[list[AttentionShard]]:
        for layer, roles in self._roles.items():
            by_file = defaultdict(list)
            for role, name in roles.items():
                by_file[self._files[name]].append((role, name))
            weights = {}
            for file, entries in by_file.items():
                with _open(file) as f:
                    for role, name in entries:
                        try:
                            weights[role] = f.get_tensor(name)
                        except (SafetensorError, OSError) as err:
                            raise MegarankError(f"'{file}': tensor '{name}' cannot be read ({err})") from None
            yield [AttentionShard(layer=layer, first_head=0, **weights)]
