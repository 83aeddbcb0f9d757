"""Hugging Face safetensors directories, read tensor by tensor, in any layout of hf_layouts.LAYOUTS.

Families read (names after any prefix such as 'model.', 'transformer.', 'gpt_neox.', 'model.decoder.'):
    LLaMA-style (LLaMA, Mistral, Qwen2, Qwen3, Gemma, OPT): layers.<i>.self_attn.{q,k,v}_proj.weight and
        o_proj (OPT: out_proj); grouped-query attention: k/v_proj have num_key_value_heads heads
    BERT-style (BERT, RoBERTa): layer.<i>.attention.self.{query,key,value}.weight, attention.output.dense.weight
    GPT-2: h.<i>.attn.c_attn.weight (Conv1D, (in, out); [q; k; v]) and h.<i>.attn.c_proj.weight
    GPT-NeoX/Pythia: layers.<i>.attention.query_key_value.weight ([q, k, v] per head) and attention.dense.weight
    Falcon: h.<i>.self_attention.query_key_value.weight (per K/V group [q.., k, v]: multi-query, or
        new_decoder_architecture with num_kv_heads) and self_attention.dense.weight
    Phi-3: layers.<i>.self_attn.qkv_proj.weight ([all q; all k; all v]) and self_attn.o_proj.weight
Head counts come from config.json, whatever the family calls them (num_attention_heads or n_head; K/V heads
from num_key_value_heads, or Falcon's multi_query / new_decoder_architecture + num_kv_heads, else read off the
weights' heights; head_dim when given, else d_model / n_heads) or --n-heads. HF stores LLaMA's q/k rows permuted
within each head for its rotate-half RoPE; the same permutation of W_Q,h and W_K,h cancels in W_Q,hᵀW_K,h, so
the spectra are those of the original weights. With per-head q/k norms (Qwen3's q_norm/k_norm) the product
analysed is W_Q,hᵀW_K,h of the raw weights (the norm sits between them); details['qk_norm'] says so.

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

from megarank.analysis.readers import AttentionShard, ModelInfo, WeightSource, head_layout
from megarank.analysis.readers.hf_layouts import LAYOUTS, Geometry, Layout, families, kv_heads_from_shape
from megarank.errors import MegarankError

INDEX = "model.safetensors.index.json"
HEAD_KEYS = ("num_attention_heads", "n_head", "n_heads", "num_heads")  # how families name the query heads


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
    """A Hugging Face model directory, validated on open; layers() reads one layer's attention tensors at a time."""

    def __init__(self, root: Path, *, n_heads: int | None = None, prefix: str | None = None):
        files, listing = _shard_files(root)
        self._layout, self._prefix, self._names = self._attention_names(files, listing, prefix)
        layout, self._files = self._layout, files
        shapes, dtypes = {}, set()
        wanted = [n for names in self._names.values() for n in names.values()]
        for file in sorted({files[n] for n in wanted}):
            with _open(file) as f:  # every shard is opened, so truncation surfaces here
                for name in (n for n in wanted if files[n] == file):
                    tensor = f.get_slice(name)
                    shapes[name] = tuple(tensor.get_shape())
                    dtypes.add(str(tensor.get_dtype()))
        self._check_all_shards(files)
        config = self._read_config(root)
        linear = {name: shape[::-1] if layout.conv1d else shape for name, shape in shapes.items()}
        self._geometry = self._resolve_geometry(root, config, layout, n_heads,
                                                {slot: linear[name] for slot, name in self._names[0].items()})
        for layer, names in self._names.items():
            for slot, name in names.items():
                expected = layout.stored_shape(slot, self._geometry)
                if shapes[name] != expected:
                    g = self._geometry
                    raise MegarankError(
                        f"'{files[name]}': {name} has shape {shapes[name]}, expected {expected} for {g.n_heads} "
                        f"heads ({g.n_kv_heads} K/V) of width {g.d_head}; the head count does not match the "
                        "weights (check num_attention_heads / n_heads)")
        g = self._geometry
        details = {"style": layout.name, "dtype": sorted(dtypes), "architectures": config.get("architectures"),
                   "shards": len(set(files.values()))}
        norms = self._qk_norms(files)
        if norms:
            details["qk_norm"] = (f"{'/'.join(norms)} present: the qk product analysed is W_Q,hᵀW_K,h of the raw "
                                  "weights (the per-head norm sits between them and is not folded in)")
        self.info = ModelInfo(
            family=str(config.get("model_type", layout.name)), n_layers=len(self._names), n_heads=g.n_heads,
            n_kv_heads=g.n_kv_heads, d_model=g.d_model, d_head=g.d_head, source=str(root), format="hf-safetensors",
            details=details)

    @staticmethod
    def _resolve_geometry(root: Path, config: dict, layout: Layout, n_heads: int | None,
                          linear: dict[str, tuple[int, ...]]) -> Geometry:
        """Head counts and widths from config.json (or --n-heads) and layer 0's shapes in nn.Linear layout."""
        key = next((k for k in HEAD_KEYS if isinstance(config.get(k), int)), None)
        cfg_heads = config.get(key) if key else None
        if n_heads is not None and cfg_heads is not None and n_heads != cfg_heads:
            raise MegarankError(f"'{root / 'config.json'}' says {key}={cfg_heads}, --n-heads says {n_heads}; drop "
                                "--n-heads")
        heads = n_heads if n_heads is not None else cfg_heads
        if heads is None:
            raise MegarankError(f"'{root}' has no config.json giving num_attention_heads; pass --n-heads")
        where = str(root / "config.json") if cfg_heads is not None else str(root)
        d_model, o_width = linear["o"]
        head_dim = config.get("head_dim") if isinstance(config.get("head_dim"), int) else None
        head_dim = head_layout(heads, heads, o_width, head_dim, where=where)
        kv_heads = layout.kv_heads(config, heads)
        if kv_heads is None:
            key_slot = "k" if "k" in linear else "qkv"
            kv_heads = kv_heads_from_shape(key_slot, linear[key_slot], heads, max(head_dim, 1)) or heads
        head_layout(heads, kv_heads, d_model, head_dim, where=where)
        return Geometry(n_heads=heads, n_kv_heads=kv_heads, d_head=head_dim, d_model=d_model)

    @staticmethod
    def _attention_names(files: dict[str, Path], listing: Path,
                         prefix: str | None) -> tuple[Layout, str, dict[int, dict[str, str]]]:
        """The one attention stack in `files`: its layout, name prefix and {layer: {slot: tensor name}}.
        A layout claims a prefix when its q (or fused qkv) tensor appears there; o names alone claim nothing."""
        found: dict[tuple[int, str], dict[int, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
        for name in files:
            for index, layout in enumerate(LAYOUTS):
                match = layout.pattern.match(name)
                if match and (prefix is None or match["prefix"] == prefix):
                    found[(index, match["prefix"])][int(match["layer"])][layout.slot(match["tensor"])] = name
        stacks = {where: layers for where, layers in found.items()
                  if any(LAYOUTS[where[0]].key in slots for slots in layers.values())}
        if not stacks:
            attention = [n for n in files if re.search(r"att|\.(q|k|v|qkv|wqkv)(_proj)?\.", n, re.IGNORECASE)]
            sample = ", ".join(f"'{n}'" for n in (attention or list(files))[:3]) or "no tensors"
            raise MegarankError(f"'{listing}': no attention weights recognised (found {sample}"
                                + (f" under prefix '{prefix}'" if prefix is not None else "")
                                + f"); megarank reads the layouts of {families()}")
        if len(stacks) > 1:
            prefixes = ", ".join(sorted({f"'{p}'" for _, p in stacks}))
            raise MegarankError(f"'{listing}' holds several attention stacks (prefixes {prefixes}); choose one "
                                "with --prefix")
        (index, stack_prefix), layers = next(iter(stacks.items()))
        layout = LAYOUTS[index]
        for layer in range(max(layers) + 1):
            missing = [slot for slot in layout.tensors if slot not in layers.get(layer, {})]
            if missing:
                names = "/".join("/".join(layout.tensors[slot]) for slot in missing)
                raise MegarankError(f"'{listing}': layer {layer} under '{stack_prefix}' lacks its "
                                    f"{'/'.join(missing)} projection weight ({names}); the checkpoint is incomplete")
        return layout, stack_prefix, dict(sorted(layers.items()))

    def _qk_norms(self, files: dict[str, Path]) -> list[str]:
        """The per-head q/k norm tensors of this stack's layer 0, by short name ([] when it has none)."""
        if not self._layout.qk_norm:
            return []
        norm = re.compile(rf"^{re.escape(self._prefix)}{self._layout.layer}"
                          rf"(?P<norm>{'|'.join(map(re.escape, self._layout.qk_norm))})\.weight$")
        found = {m["norm"] for m in map(norm.match, files) if m and m["layer"] == "0"}
        return [n for n in self._layout.qk_norm if n in found]

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
        for layer, names in self._names.items():
            by_file = defaultdict(list)
            for slot, name in names.items():
                by_file[self._files[name]].append((slot, name))
            stored = {}
            for file, entries in by_file.items():
                with _open(file) as f:
                    for slot, name in entries:
                        try:
                            stored[slot] = f.get_tensor(name)
                        except (SafetensorError, OSError) as err:
                            raise MegarankError(f"'{file}': tensor '{name}' cannot be read ({err})") from None
            q, k, v, o = self._layout.to_linear(stored, self._geometry)
            yield [AttentionShard(layer=layer, first_head=0, q=q, k=k, v=v, o=o)]
