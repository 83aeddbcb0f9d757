"""The saved tensors of a megarank checkpoint (DeepSpeed's files), read offline one TP rank's shard at a time.

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

Each shard is checked on open: every tensor asked for is present, and where the marker records the tensor
(marker.py `tensors`) its shape is the recorded global shape split over the TP ranks by its TP style. How the
shards tile the whole tensor (merge_shards) is read from the same records, never from megarank.parallel.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from megarank.ckpt.marker import Marker, TensorRecord
from megarank.errors import MegarankError
from megarank.models.roles import split_dim

def local_shape(record: TensorRecord, tp: int) -> tuple[int, ...] | None:
    """The shape one TP rank holds of a recorded tensor (None when the record has no shape)."""
    if record.shape is None:
        return None
    shape = list(record.shape)
    dim = split_dim(record.tp_style)
    if dim is not None:
        shape[dim] //= tp
    return tuple(shape)


def merge_shards(shards: Sequence[torch.Tensor], tp_style: str) -> torch.Tensor:
    """The whole tensor from its TP ranks' shards, by its TP style (replicated: rank 0's copy)."""
    dim = split_dim(tp_style)
    return shards[0] if dim is None else torch.cat(list(shards), dim=dim)


class CheckpointShards:
    """Tensors `names` of one complete tag, each TP rank's shard, validated on open. A context manager:
    close() removes the per-rank views made for zero_to_fp32.

    weights: 'module' (as the model held them) or 'fp32' (ZeRO's master copy)."""

    def __init__(self, tag_dir: Path, marker: Marker, names: Sequence[str], *, weights: str = "module"):
        if weights not in ("module", "fp32"):
            raise MegarankError(f"--weights must be 'module' or 'fp32', got '{weights}'")
        self.tag_dir, self.marker, self.weights = tag_dir, marker, weights
        self.tp, self.stage = marker.layout.tp, marker.zero_stage
        self.names = list(dict.fromkeys(names))
        self._views: list[Path] = []
        self._cast: dict[str, torch.dtype] | None = None  # ZeRO-3 module weights: the dtype to round to
        try:
            self._ranks = [self._open_rank(t, marker.layout.dp) for t in range(self.tp)]
        except BaseException:
            self.close()
            raise

    def shape(self, t: int, name: str) -> tuple[int, ...]:
        """The shape of TP rank t's shard of `name`, without reading it."""
        return tuple(self._ranks[t][name].shape)

    def tensor(self, t: int, name: str) -> torch.Tensor:
        """TP rank t's shard of `name`, in the module's dtype (or fp32 for the master copy)."""
        tensor = self._ranks[t][name].contiguous().detach()  # gathers a lazy zero_to_fp32 tensor
        return tensor.to(self._cast[name]) if self._cast is not None else tensor

    def whole(self, name: str) -> torch.Tensor:
        """The whole (TP=1) tensor `name`, its shards merged by the TP style the marker records."""
        return merge_shards([self.tensor(t, name) for t in range(self.tp)], self.marker.tensor_record(name).tp_style)

    def close(self) -> None:
        for view in self._views:
            shutil.rmtree(view, ignore_errors=True)
        self._views = []

    def __enter__(self) -> CheckpointShards:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_rank(self, t: int, dp: int) -> dict:
        """{tensor name: tensor or lazily gathered tensor} of TP rank t's `names`, validated."""
        names = self.names
        if self.weights == "module" and self.stage < 3:
            where = self.tag_dir / f"mp_rank_{t:02d}_model_states.pt"
            tensors = _load_states(where)
            self._check(tensors, where)
            return {name: tensors[name] for name in names}
        # ZeRO-3 (either weights) or fp32 master weights: DeepSpeed's zero_to_fp32 on this TP rank's files
        placeholders = models = None
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
        self._check(tensors, self.tag_dir if self.tp == 1 else self.tag_dir / f"*mp_rank_{t:02d}*")
        out = {name: tensors[name] for name in names}
        if self.weights == "module":  # ZeRO-3: round the master copy to the module's dtype, as the engine did
            self._check(placeholders, models[0], shapes=False)
            self._cast = {name: placeholders[name].dtype for name in names}
        return out

    def _zero_to_fp32(self, t: int) -> dict:
        root, tag = self.tag_dir.parent, self.tag_dir.name
        if self.tp > 1:  # the tool expects one TP rank's files: show it a directory with only those
            view = Path(tempfile.mkdtemp(prefix=f"megarank-tp{t}-"))
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

    def _check(self, tensors: dict, where: Path, *, shapes: bool = True) -> None:
        """Every name present; each recorded tensor's shape the recorded one split over the TP ranks."""
        missing = [name for name in self.names if name not in tensors]
        if missing:
            found = ", ".join(list(tensors)[:3])
            raise MegarankError(f"'{where}' has no tensor '{missing[0]}' ({len(missing)} tensors missing; found "
                                f"e.g. {found}): not megarank's GPT/ViT parameter names")
        records = self.marker.tensors or {}
        for name in self.names if shapes else ():
            expected = local_shape(records[name], self.tp) if name in records else None
            shape = tuple(tensors[name].shape)
            if expected is not None and shape != expected:
                record = records[name]
                raise MegarankError(f"'{where}': {name} has shape {shape}, expected {expected} (the marker records "
                                    f"{record.shape}, {record.tp_style} over tp={self.tp})")


def _load_states(path: Path) -> dict:
    """A DeepSpeed *_model_states.pt's module state dict, memory-mapped (tensors stay on disk until touched)."""
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
