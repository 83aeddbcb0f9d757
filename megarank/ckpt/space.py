"""Room for a checkpoint: the free space of checkpoint.dir against the size a checkpoint needs, and a full
disk during a save told as one line.

The size a checkpoint needs is the previous checkpoint's (the sum of its marker's file records, or of its
files for a marker without them); before any save it is estimated from the parameter count (ESTIMATE_BYTES
per parameter). A save is refused before writing when the previous checkpoint's size says it will not fit;
a save that runs out of space anyway (the first one, or another process filled the disk) ends with the same
kind of line instead of torch's zip-writer traceback. The cut-short tag has no marker: never resumed from.
"""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass
from pathlib import Path

from megarank.ckpt.manifest import file_sizes
from megarank.ckpt.marker import Marker, MarkerError
from megarank.ckpt.tags import complete_checkpoints
from megarank.errors import MegarankError

ESTIMATE_BYTES = 16
"""Bytes per parameter of a checkpoint before one exists: the module's weights (4 in fp32, 2 in bf16), ZeRO's
fp32 master copy (4) and Adam's two moments (8); fp32 training without ZeRO saves a little less."""

# how torch reports a failed write of a checkpoint file: its zip writer (the pos check of inline_container.cc,
# or PytorchStreamWriter), or the legacy writer's write(), whose message carries the OS error's text
_TORCH_WRITE_FAILURES = ("inline_container.cc", "PytorchStreamWriter", "write(): fd")
_OUT_OF_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


@dataclass(frozen=True)
class Need:
    """The bytes a checkpoint needs and where the figure comes from."""

    n_bytes: int
    source: str  # 'the size of global_step4' or 'estimated at 16 bytes per parameter'


def previous_need(ckpt_dir: Path, step: int) -> Need | None:
    """The size of the newest complete checkpoint before `step` in ckpt_dir, or None when there is none."""
    older = [tag for s, tag in complete_checkpoints(ckpt_dir) if s < step]
    if not older:
        return None
    tag = older[-1]
    try:
        n_bytes = Marker.read(tag).n_bytes
    except MarkerError:
        n_bytes = None
    if n_bytes is None:
        n_bytes = sum(file_sizes(tag).values())
    return Need(n_bytes, f"the size of {tag.name}")


def estimated_need(n_params: int) -> Need:
    return Need(n_params * ESTIMATE_BYTES, f"estimated at {ESTIMATE_BYTES} bytes per parameter")


def free_bytes(directory: Path) -> int | None:
    """Free space of the file system holding `directory` (its nearest existing ancestor); None if unknown."""
    directory = Path(directory)
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def too_little_room(ckpt_dir: Path, need: Need, tag: str) -> str | None:
    """The one-line refusal when ckpt_dir has less free space than `need`, else None."""
    free = free_bytes(ckpt_dir)
    if free is None or free >= need.n_bytes:
        return None
    return (f"checkpoint.dir '{ckpt_dir}' has {human_bytes(free)} free, a checkpoint needs {human_bytes(need.n_bytes)} "
            f"({need.source}): not saving {tag}; {_FIX}")


def is_out_of_space(err: BaseException, ckpt_dir: Path, need: Need) -> bool:
    """True when `err`, raised while writing a checkpoint, means the disk is full: the OS says so, or torch's
    writer failed while the free space is below what a checkpoint needs."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(err, RuntimeError):
        return False
    text = str(err)
    if any(sign in text for sign in _OUT_OF_SPACE_TEXT):
        return True
    free = free_bytes(ckpt_dir)
    return any(sign in text for sign in _TORCH_WRITE_FAILURES) and free is not None and free < need.n_bytes


def out_of_space(ckpt_dir: Path, need: Need, tag: str) -> MegarankError:
    """The one-line error for a save that ran out of space."""
    free = free_bytes(ckpt_dir)
    shown = "unknown" if free is None else human_bytes(free)
    return MegarankError(f"checkpoint.dir '{ckpt_dir}' ran out of space saving {tag} ({shown} free, a checkpoint "
                         f"needs {human_bytes(need.n_bytes)}, {need.source}); {_FIX}; {tag} was cut short (no "
                         "marker) and is never resumed from")


_FIX = "free space there, keep fewer checkpoints (checkpoint.keep_last) or set checkpoint.dir to a larger disk"


def human_bytes(n_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000:
            return f"{n_bytes:.3g} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} TB"
