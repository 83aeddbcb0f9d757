"""What a checkpoint directory holds and which of its tags are complete.

Layout of checkpoint.dir (DeepSpeed's, so its tools such as zero_to_fp32.py read it):
    global_step<N>/              one tag per save: DeepSpeed's model/optimizer shards, rng_rank<R>.pt
        megarank_complete.json   the completion marker (marker.py), written last by rank 0 once every rank's
                                 files are on disk
    global_step<N>_universal/    DeepSpeed's universal (layout-free) form of a tag, made for a resume at another
                                 data-parallel size; it gets its own marker
    latest                       name of the newest complete tag (DeepSpeed's tools read it)

A tag without a marker was cut short mid-save and is never read. Which tags a user's path designates (a run
dir, a checkpoint dir, a tag): resolve.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from megarank.ckpt.marker import COMPLETE_MARKER
from megarank.files import atomic_write_text

__all__ = ["COMPLETE_MARKER", "LATEST", "TAG_PATTERN", "all_tags", "complete_checkpoints", "is_complete", "tag_for",
           "universal_companion", "write_latest"]

LATEST = "latest"
TAG_PATTERN = re.compile(r"^global_step(\d+)$")


def tag_for(step: int) -> str:
    return f"global_step{step}"


def universal_companion(tag_dir: Path) -> Path:
    """Where the universal form of tag_dir lives (made on demand by a resume at another layout)."""
    return tag_dir.with_name(tag_dir.name + "_universal")


def is_complete(tag_dir: Path) -> bool:
    """True once the tag's marker is written."""
    return (tag_dir / COMPLETE_MARKER).is_file()


def all_tags(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, tag dir) of every tag in ckpt_dir, complete or cut short, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for child in ckpt_dir.iterdir():
        match = TAG_PATTERN.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def complete_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, tag dir) of every complete checkpoint (its marker written), oldest first."""
    return [(step, tag) for step, tag in all_tags(ckpt_dir) if is_complete(tag)]


def write_latest(ckpt_dir: Path, tag: str) -> None:
    atomic_write_text(ckpt_dir / LATEST, tag)
