"""Which old checkpoints a run removes after a save: checkpoint.keep_last and checkpoint.keep_every.

Run by rank 0 only after the new checkpoint is complete (its marker written, `latest` naming it), so a kill at
any point leaves at least that one. Kept: the keep_last newest complete tags up to the new one, every tag whose
step is a multiple of keep_every, the new one itself, and anything newer than it (left by an attempt that went
further before it died or was resumed from an older tag: resumable by path, and replaced when training reaches
its step). Cut-short tags older than the new one can never be resumed from and go too. keep_last=0 keeps all.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from megarank.ckpt.tags import COMPLETE_MARKER, all_tags, is_complete, universal_companion


def steps_to_remove(complete: Sequence[int], newest: int, keep_last: int, keep_every: int) -> list[int]:
    """Steps of the complete checkpoints to remove once `newest` is saved, oldest first."""
    if keep_last == 0:
        return []
    older = sorted(step for step in complete if step <= newest)
    kept = {newest, *older[-keep_last:]}
    kept |= {step for step in older if keep_every and step % keep_every == 0}
    return [step for step in older if step not in kept]


def prune(ckpt_dir: Path, newest: int, keep_last: int, keep_every: int) -> list[Path]:
    """Remove what the policy drops from ckpt_dir (with their universal forms); returns the tags removed."""
    if keep_last == 0:
        return []
    tags = all_tags(ckpt_dir)
    complete = [step for step, tag in tags if is_complete(tag)]
    doomed = set(steps_to_remove(complete, newest, keep_last, keep_every))
    doomed |= {step for step, tag in tags if step < newest and step not in complete}
    removed = [tag for step, tag in tags if step in doomed]
    for tag in removed:
        remove_tag(tag)
    return removed


def remove_tag(tag_dir: Path) -> None:
    """Marker first: a kill halfway leaves a tag that reads as cut short, never one that resumes broken."""
    for directory in (tag_dir, universal_companion(tag_dir)):
        (directory / COMPLETE_MARKER).unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
