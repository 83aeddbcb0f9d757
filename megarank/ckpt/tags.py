"""What a checkpoint directory holds and which of its tags are complete.

Layout of checkpoint.dir (DeepSpeed's, so its tools such as zero_to_fp32.py read it):
    global_step<N>/              one tag per save: DeepSpeed's model/optimizer shards, rng_rank<R>.pt
        megarank_complete.json   the completion marker, written last by rank 0 once every rank's files are on disk
    global_step<N>_universal/    DeepSpeed's universal (layout-free) form of a tag, made for a resume at another
                                 data-parallel size; it gets its own marker
    latest                       name of the newest complete tag (DeepSpeed's tools read it)

The marker (JSON): step, time, layout {tp, dp, world_size}, zero_stage, config (the resolved YAML), data (the
training data's identity) and files, {relative path: {size, sha256}} of every other file of the tag
(manifest.py; markers written before it have no files and cannot be verified). A tag without a marker was
cut short mid-save and is never read.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

from megarank.errors import MegarankError

COMPLETE_MARKER = "megarank_complete.json"
LATEST = "latest"
TAG_PATTERN = re.compile(r"^global_step(\d+)$")


def tag_for(step: int) -> str:
    return f"global_step{step}"


def universal_companion(tag_dir: Path) -> Path:
    """Where the universal form of tag_dir lives (made on demand by a resume at another layout)."""
    return tag_dir.with_name(tag_dir.name + "_universal")


def all_tags(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, tag dir) of every tag, complete or cut short, oldest first."""
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
    return [(step, tag) for step, tag in all_tags(ckpt_dir) if (tag / COMPLETE_MARKER).is_file()]


def checkpoint_dir_of(path: Path) -> Path:
    """The checkpoint.dir that `path` designates: itself when it holds tags or `latest`; for a run dir, the
    checkpoint.dir its config.yaml names, else <run dir>/checkpoints."""
    if (path / LATEST).is_file() or any(TAG_PATTERN.match(child.name) for child in path.iterdir()):
        return path
    config = path / "config.yaml"
    if config.is_file():
        try:
            configured = (yaml.safe_load(config.read_text()) or {}).get("checkpoint", {}).get("dir")
        except yaml.YAMLError as err:
            raise MegarankError(f"'{config}' is not valid YAML ({str(err).splitlines()[0]})") from None
        if configured and Path(configured).is_dir():
            return Path(configured)
    return path / "checkpoints"


def load_marker(tag_dir: Path) -> dict:
    """The tag's completion marker, as written."""
    path = tag_dir / COMPLETE_MARKER
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MegarankError(f"'{path}' cannot be read as a checkpoint marker ({err})") from None
    if not isinstance(marker, dict):
        raise MegarankError(f"'{path}' is not a checkpoint marker (a JSON object)")
    return marker


def write_marker(tag_dir: Path, marker: dict) -> None:
    """Commit the tag: once this file exists, resume and the offline tools read the tag."""
    _atomic_write_text(tag_dir / COMPLETE_MARKER, json.dumps(marker, indent=2))


def write_latest(ckpt_dir: Path, tag: str) -> None:
    _atomic_write_text(ckpt_dir / LATEST, tag)


def saved_layout(tag_dir: Path) -> dict:
    """{'tp', 'dp', 'world_size', 'zero_stage'} of the run that wrote this checkpoint."""
    marker = load_marker(tag_dir)
    return {**marker["layout"], "zero_stage": marker["zero_stage"]}


def _atomic_write_text(path: Path, text: str) -> None:
    # a reader (or a kill) never sees half a marker: the rename is atomic on POSIX file systems
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
