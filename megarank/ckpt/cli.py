"""`megarank-ckpt verify PATH`: check a run's checkpoints against their markers' file records, offline.

PATH is a run dir, its checkpoint dir, or one global_step<N> tag. One line per tag, oldest first:
    global_step2: not verifiable (its marker predates file records)
    global_step4: ok (12 files, 1.3 GB)
    global_step8: FAILED 'mp_rank_00_model_states.pt' has 1024 bytes, the marker records 4096 (truncated ...)
    global_step9: incomplete (no megarank_complete.json: cut short mid-save, never resumed from)
Exit 0 when no complete tag fails, 1 when one does, 2 on bad input (one line, `error: ...`, on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from megarank.ckpt.manifest import verify_tag
from megarank.ckpt.tags import COMPLETE_MARKER, TAG_PATTERN, all_tags, checkpoint_dir_of
from megarank.errors import MegarankError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megarank-ckpt", description="Offline checks of megarank checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check every file of each tag against its marker's size and sha256")
    verify.add_argument("path", type=Path, help="run dir, checkpoint dir or global_step<N> tag")
    return parser


def tags_at(path: Path) -> list[Path]:
    """The tags PATH designates, oldest first: itself if it is a tag, else every tag of its checkpoint dir."""
    if not path.is_dir():
        raise MegarankError(f"'{path}' is not a directory: pass a run dir, its checkpoint dir or a global_step<N> tag")
    if (path / COMPLETE_MARKER).is_file():
        return [path]
    if TAG_PATTERN.match(path.name):
        raise MegarankError(f"'{path}' is an incomplete checkpoint (no {COMPLETE_MARKER}: the save was cut short)")
    ckpt_dir = checkpoint_dir_of(path)
    tags = [tag for _, tag in all_tags(ckpt_dir)]
    if not tags:
        raise MegarankError(f"'{path}' holds no checkpoint (no global_step<N>/ under '{ckpt_dir}')")
    return tags


def verify(path: Path) -> int:
    """Print one line per tag; 1 if any complete tag fails, else 0."""
    workers = min(8, os.cpu_count() or 1)
    failed = False
    for tag in tags_at(path):
        if not (tag / COMPLETE_MARKER).is_file():
            print(f"{tag.name}: incomplete (no {COMPLETE_MARKER}: cut short mid-save, never resumed from)")
            continue
        verdict = verify_tag(tag, workers=workers)
        if verdict.problem is not None:
            failed = True
            print(f"{tag.name}: FAILED {verdict.problem}")
        elif not verdict.verifiable:
            print(f"{tag.name}: not verifiable (its marker predates file records)")
        else:
            print(f"{tag.name}: ok ({verdict.n_files} files, {_human(verdict.n_bytes)})")
    return 1 if failed else 0


def _human(n_bytes: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n_bytes < 1000:
            return f"{n_bytes:.3g} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} GB"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return verify(args.path)
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
