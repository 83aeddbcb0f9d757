"""Which checkpoint(s) a user's path designates: the one resolver behind megarank-rank, megarank-eval,
megarank-ckpt and `megarank-rank compare --all-steps`.

A path may be
    a tag           global_step<N>/ itself (refused when cut short: no megarank_complete.json);
    a checkpoint dir one holding global_step<N>/ tags or `latest`;
    a run dir       its config.yaml names checkpoint.dir; <run dir>/checkpoints otherwise.
resolve_tag gives the one tag to read (a dir: the tag `latest` names if complete, else the newest complete one);
tags_at gives every tag, oldest first. Each failure is one MegarankError line naming the path.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from megarank.ckpt.tags import COMPLETE_MARKER, LATEST, TAG_PATTERN, all_tags, is_complete
from megarank.errors import MegarankError


def looks_like_checkpoint(path: Path) -> bool:
    """True for a tag (complete or not), a checkpoint dir or a run dir: what the resolver accepts."""
    if not path.is_dir():
        return False
    if is_complete(path) or TAG_PATTERN.match(path.name) or (path / LATEST).is_file():
        return True
    return _holds_tags(path) or (path / "checkpoints").is_dir()


def checkpoint_dir_of(path: Path) -> Path:
    """The checkpoint.dir that `path` designates: itself when it holds tags or `latest`; for a run dir, the
    checkpoint.dir its config.yaml names, else <run dir>/checkpoints."""
    if (path / LATEST).is_file() or _holds_tags(path):
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


def tags_at(path: Path, *, complete_only: bool = True) -> list[Path]:
    """The tags `path` designates, oldest first: itself if it is a complete tag, else every tag of its checkpoint
    dir (complete_only=False: those cut short too)."""
    path = _checked(path)
    if _is_tag(path):
        return [path]
    ckpt_dir = checkpoint_dir_of(path)
    tags = [tag for _, tag in all_tags(ckpt_dir) if not complete_only or is_complete(tag)]
    if not tags:
        what = f"complete checkpoint (no global_step<N>/{COMPLETE_MARKER}" if complete_only else \
            "checkpoint (no global_step<N>/"
        raise MegarankError(f"'{path}' holds no {what} under '{ckpt_dir}')")
    return tags


def resolve_tag(path: Path) -> Path:
    """The one complete tag `path` designates: itself, or in a checkpoint dir the tag `latest` names (when
    complete), else the newest complete one."""
    path = _checked(path)
    if _is_tag(path):
        return path
    ckpt_dir = checkpoint_dir_of(path)
    latest = ckpt_dir / LATEST
    if latest.is_file():
        named = ckpt_dir / latest.read_text().strip()
        if is_complete(named):
            return named
    return tags_at(path)[-1]


def _checked(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise MegarankError(f"'{path}' is not a directory: pass a run dir, its checkpoint dir or a global_step<N> tag")
    return path


def _is_tag(path: Path) -> bool:
    """True for a complete tag; an error for one cut short (it must never be read)."""
    if is_complete(path):
        return True
    if TAG_PATTERN.match(path.name):
        raise MegarankError(f"'{path}' is an incomplete checkpoint (no {COMPLETE_MARKER}: the save was cut short); "
                            "point at a complete global_step<N> or at the checkpoint directory")
    return False


def _holds_tags(path: Path) -> bool:
    return any(TAG_PATTERN.match(child.name) for child in path.iterdir())
