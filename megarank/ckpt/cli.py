"""`megarank-ckpt verify PATH`: check a run's checkpoints against their markers' file records, offline.

PATH is a run dir, its checkpoint dir, or one global_step<N> tag (resolve.py). One line per tag, oldest first:
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
from megarank.ckpt.resolve import tags_at
from megarank.ckpt.space import human_bytes
from megarank.ckpt.tags import COMPLETE_MARKER, is_complete
from megarank.errors import MegarankError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megarank-ckpt", description="Offline checks of megarank checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check every file of each tag against its marker's size and sha256")
    verify.add_argument("path", type=Path, help="run dir, checkpoint dir or global_step<N> tag")
    return parser


def verify(path: Path) -> int:
    """Print one line per tag; 1 if any complete tag fails, else 0."""
    workers = min(8, os.cpu_count() or 1)
    failed = False
    for tag in tags_at(path, complete_only=False):
        if not is_complete(tag):
            print(f"{tag.name}: incomplete (no {COMPLETE_MARKER}: cut short mid-save, never resumed from)")
            continue
        verdict = verify_tag(tag, workers=workers)
        if verdict.problem is not None:
            failed = True
            print(f"{tag.name}: FAILED {verdict.problem}")
        elif not verdict.verifiable:
            print(f"{tag.name}: not verifiable (its marker predates file records)")
        else:
            print(f"{tag.name}: ok ({verdict.n_files} files, {human_bytes(verdict.n_bytes)})")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return verify(args.path)
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
