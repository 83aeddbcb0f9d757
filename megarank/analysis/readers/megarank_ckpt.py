"""megarank's own checkpoints (DeepSpeed tags), read offline, one tensor-parallel shard at a time.

Which tag: the path may be a run dir (its config.yaml names checkpoint.dir; <run>/checkpoints otherwise), a
checkpoint.dir (the tag `latest` names, else the newest complete one), or one global_step<N> tag. A tag
without megarank_complete.json was cut short mid-save (megarank/ckpt/tags.py) and is refused.

Which files (DeepSpeed's layout; tp, dp and the ZeRO stage come from the tag's marker):
    module weights, ZeRO 0/1/2: mp_rank_{t:02d}_model_states.pt["module"], TP rank t's module state dict,
        memory-mapped, so only the tensors read are paged in.
    module weights, ZeRO-3: those entries are empty placeholders (the parameters were partitioned); the
        tensors are rebuilt from the zero_pp_rank_*_optim_states.pt partitions by DeepSpeed's zero_to_fp32
        and rounded to the placeholder's dtype, which is what the engine's module held.
    fp32 weights: ZeRO's fp32 master copy through DeepSpeed's zero_to_fp32 in its lazy mode. That tool merges
        the data-parallel partitions of a single TP rank, so for tp > 1 it is pointed at a per-rank view: a
        temp dir of symlinks to rank t's files.
Memory: module weights (ZeRO 0/1/2) and anything under ZeRO-3 are read one tensor at a time from memory-mapped
files. The fp32 master copy under ZeRO-1/2 is the exception: zero_to_fp32 concatenates a TP rank's partitions
in memory first (4 bytes per parameter of that rank), which is DeepSpeed's choice, not ours.
Under TP, rank t holds the q/k/v rows and o columns of heads [t·n_heads/tp, (t+1)·n_heads/tp) under the TP=1
names, so each rank's slice is a set of whole heads and is analysed as it lies.
Other tensors: layers() yields the attention projections only; pass `names` to read more (megarank-eval reads
every parameter) and take each TP rank's shard through tensor(t, name), read and validated alike.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import yaml

from megarank.analysis.readers import AttentionShard, ModelInfo, WeightSource, check_head_shapes, head_layout
from megarank.ckpt.tags import COMPLETE_MARKER, TAG_PATTERN, checkpoint_dir_of, complete_checkpoints
from megarank.errors import MegarankError

ROLES = ("q", "k", "v", "o")


def attn_name(layer: int, role: str) -> str:
    """The parameter name megarank's GPT and ViT give a projection (megarank/models/block.py)."""
    return f"blocks.{layer}.attn.{role}_proj.weight"


def looks_like(path: Path) -> bool:
    """True for a tag (complete or not), a checkpoint.dir or a run dir."""
    if not path.is_dir():
        return False
    if (path / COMPLETE_MARKER).is_file() or TAG_PATTERN.match(path.name) or (path / "latest").is_file():
        return True
    return _has_tags(path) or (path / "checkpoints").is_dir()


def _has_tags(path: Path) -> bool:
    return any(TAG_PATTERN.match(child.name) for child in path.iterdir())


def resolve_tag(path: Path) -> Path:
    """The complete global_step<N> directory `path` designates."""
    if (path / COMPLETE_MARKER).is_file():
        return path
    if TAG_PATTERN.match(path.name):
        raise MegarankError(f"'{path}' is an incomplete checkpoint (no {COMPLETE_MARKER}: the save was cut "
                            "short); point at a complete global_step<N> or at the checkpoint directory")
    ckpt_dir = checkpoint_dir_of(path)
    latest = ckpt_dir / "latest"
    if latest.is_file():
        named = ckpt_dir / latest.read_text().strip()
        if (named / COMPLETE_MARKER).is_file():
            return named
    complete = complete_checkpoints(ckpt_dir)
    if not complete:
        raise MegarankError(f"'{path}' holds no complete checkpoint (no global_step<N>/{COMPLETE_MARKER} "
                            f"under '{ckpt_dir}')")
    return complete[-1][1]


def all_tags(path: Path) -> list[Path]:
    """Every complete tag of the run or checkpoint dir `path`, oldest first (a tag path is itself)."""
    if (path / COMPLETE_MARKER).is_file() or TAG_PATTERN.match(path.name):
        return [resolve_tag(path)]
    tags = [tag for _, tag in complete_checkpoints(checkpoint_dir_of(path))]
    if not tags:
        raise MegarankError(f"'{path}' holds no complete checkpoint (no global_step<N>/{COMPLETE_MARKER})")
    return tags


def _load_states(path: Path) -> dict:
    """A DeepSpeed *_model_states.pt, memory-mapped (tensors stay on disk until touched)."""
    if not path.is_file():
        raise MegarankError(f"'{path}' is missing: the checkpoint is incomplete (a shard was deleted or never "
                            "copied)")
    try:
        states = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # torch reports truncation as OSError, RuntimeError or pickle errors
        raise MegarankError(f"'{path}' cannot be read: truncated or corrupt ({_first_line(err)})") from None
    if not isinstance(states, dict) or not isinstance(states.get("module"), dict):
        raise MegarankError(f"'{path}' is not a DeepSpeed model-states file (no 'module' state dict)")
    return states["module"]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_marker(path: Path) -> dict:
    """What the analysis needs from a tag's megarank_complete.json (its config is the resolved YAML)."""
    try:
        marker = json.loads(path.read_text())
        cfg = yaml.safe_load(marker["config"])
        model, optim = cfg["model"], cfg.get("optim") or {}
        return {"step": int(marker["step"]), "tp": int(marker["layout"]["tp"]), "dp": int(marker["layout"]["dp"]),
                "zero_stage": int(marker["zero_stage"]), "family": str(model.get("family", "gpt")),
                "n_layers": int(model["n_layers"]), "d_model": int(model["d_model"]),
                "n_heads": int(model["n_heads"]), "wd_attn": optim.get("wd_attn"), "wd_mlp": optim.get("wd_mlp"),
                "decoupled": optim.get("decoupled"), "precision": (cfg.get("train") or {}).get("precision")}
    except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as err:
        raise MegarankError(f"'{path}' is not a valid megarank checkpoint marker ({_first_line(err)})") from None


class MegarankCheckpoint(WeightSource):
    """One complete tag, validated on open; layers() yields each layer's TP shards.

    names: tensors to read besides the attention projections, each TP rank's shard through tensor(t, name)."""

    def __init__(self, tag_dir: Path, *, weights: str = "module", n_heads: int | None = None,
                 names: Sequence[str] = ()):
        if weights not in ("module", "fp32"):
            raise MegarankError(f"--weights must be 'module' or 'fp32', got '{weights}'")
        self.tag_dir, self.weights = tag_dir, weights
        marker_path = tag_dir / COMPLETE_MARKER
        meta = read_marker(marker_path)
        if n_heads is not None and n_heads != meta["n_heads"]:
            raise MegarankError(f"'{marker_path}': the checkpoint was trained with n_heads={meta['n_heads']}, "
                                f"--n-heads says {n_heads}; drop --n-heads")
        self.tp, self.stage = meta["tp"], meta["zero_stage"]
        n_heads, d_model = meta["n_heads"], meta["d_model"]
        d_head = head_layout(n_heads, n_heads, d_model, None, where=str(marker_path))
        if n_heads % self.tp:
            raise MegarankError(f"'{marker_path}': n_heads={n_heads} is not divisible by tp={self.tp}; the head "
                                "count does not match the layout")
        self.n_local = n_heads // self.tp
        self.info = ModelInfo(
            family=meta["family"], n_layers=meta["n_layers"], n_heads=n_heads, n_kv_heads=n_heads,
            d_model=d_model, d_head=d_head, source=str(tag_dir), format="megarank",
            details={key: meta[key] for key in ("step", "tp", "dp", "zero_stage", "wd_attn", "wd_mlp", "decoupled",
                                                "precision")} | {"weights": weights})
        self._views: list[Path] = []
        self._cast: dict[str, torch.dtype] | None = None  # ZeRO-3 module weights: the dtype to round to
        attention = [attn_name(layer, role) for layer in range(self.info.n_layers) for role in ROLES]
        self._names = attention + sorted(set(names) - set(attention))
        try:
            self._ranks = [self._open_rank(t, meta["dp"]) for t in range(self.tp)]
        except BaseException:
            self.close()
            raise

    def _open_rank(self, t: int, dp: int) -> dict:
        """{tensor name: tensor or lazily gathered tensor} of TP rank t's attention weights (and `names`),
        validated."""
        names = self._names
        if self.weights == "module" and self.stage < 3:
            where = self.tag_dir / f"mp_rank_{t:02d}_model_states.pt"
            tensors = _load_states(where)
            self._check(tensors, names, where)
            return {name: tensors[name] for name in names}
        # ZeRO-3 (either weights) or fp32 master weights: DeepSpeed's zero_to_fp32 on this TP rank's files
        placeholders = None
        if self.stage == 3:
            models = [self.tag_dir / f"zero_pp_rank_{d}_mp_rank_{t:02d}_model_states.pt" for d in range(dp)]
            placeholders = _load_states(models[0])
            for path in models[1:]:
                _load_states(path)
        # DeepSpeed prefixes the partitions' names with bf16_ when its bf16 optimizer wrote them
        if self.stage == 0 and not any(self.tag_dir.glob(f"*zero_pp_rank_*_mp_rank_{t:02d}_optim_states.pt")):
            raise MegarankError(f"'{self.tag_dir}' is a ZeRO-0 checkpoint without optimizer partitions, so it "
                                "holds no separate fp32 master copy; use --weights module")
        for d in range(dp):
            name = f"zero_pp_rank_{d}_mp_rank_{t:02d}_optim_states.pt"
            if not any(self.tag_dir.glob(f"*{name}")):
                raise MegarankError(f"'{self.tag_dir / name}' is missing: the checkpoint is incomplete (a shard "
                                    "was deleted or never copied)")
        tensors = self._zero_to_fp32(t)
        where = self.tag_dir if self.tp == 1 else self.tag_dir / f"*mp_rank_{t:02d}*"
        self._check(tensors, names, where)
        out = {name: tensors[name] for name in names}
        if self.weights == "module":  # ZeRO-3: round the master copy to the module's dtype, as the engine did
            self._check(placeholders, names, models[0])
            self._cast = {name: placeholders[name].dtype for name in names}
        return out

    def _zero_to_fp32(self, t: int) -> dict:
        root, tag = self.tag_dir.parent, self.tag_dir.name
        if self.tp > 1:  # the tool expects one TP rank's files: show it a directory with only those
            view = Path(tempfile.mkdtemp(prefix=f"megarank-rank-tp{t}-"))
            self._views.append(view)
            (view / tag).mkdir()
            for path in self.tag_dir.glob(f"*mp_rank_{t:02d}_*_states.pt"):
                (view / tag / path.name).symlink_to(path.resolve())
            root = view
        quiet = io.StringIO()  # the tool prints progress and a banner; errors still arrive as exceptions
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                return get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag, lazy_mode=True)
        except Exception as err:
            raise MegarankError(f"'{self.tag_dir}': DeepSpeed's zero_to_fp32 could not rebuild TP rank {t}'s "
                                f"weights: truncated or corrupt optimizer shards ({_first_line(err)})") from None

    def _check(self, tensors: dict, names: list[str], where: Path) -> None:
        missing = [name for name in names if name not in tensors]
        if missing:
            found = ", ".join(list(tensors)[:3])
            raise MegarankError(f"'{where}' has no tensor '{missing[0]}' ({len(missing)} weights missing; found "
                                f"e.g. {found}): not megarank's GPT/ViT parameter names")
        for layer in range(self.info.n_layers):
            shapes = {role: (attn_name(layer, role), tuple(tensors[attn_name(layer, role)].shape)) for role in ROLES}
            if all(len(shape) == 1 and shape[0] == 0 for _, shape in shapes.values()):
                continue  # ZeRO-3 placeholders carry a dtype, not a shape
            check_head_shapes(shapes, n_q=self.n_local, n_kv=self.n_local, d_head=self.info.d_head,
                              d_model=self.info.d_model, where=str(where))

    def _read(self, t: int, name: str) -> torch.Tensor:
        tensor = self._ranks[t][name].contiguous().detach()  # gathers a lazy zero_to_fp32 tensor
        return tensor.to(self._cast[name]) if self._cast is not None else tensor

    def layers(self) -> Iterator[list[AttentionShard]]:
        for layer in range(self.info.n_layers):
            yield [AttentionShard(layer=layer, first_head=t * self.n_local,
                                  **{role: self._read(t, attn_name(layer, role)) for role in ROLES})
                   for t in range(self.tp)]

    def tensor(self, t: int, name: str) -> torch.Tensor:
        """TP rank t's shard of `name` (an attention projection or one of `names`), in the module's dtype."""
        return self._read(t, name)

    def close(self) -> None:
        for view in self._views:
            shutil.rmtree(view, ignore_errors=True)
        self._views = []
