"""Retention (megarank/ckpt/retention.py) against its rule written out step by step: keep the keep_last newest
complete tags up to the new one, multiples of keep_every, the new one and anything newer; and prune on a
directory: cut-short tags older than the new one and universal forms of removed tags go, nothing else."""

from __future__ import annotations

import pytest

from megarank.ckpt.retention import prune, steps_to_remove
from megarank.ckpt.tags import COMPLETE_MARKER, tag_for, universal_companion


def kept_by_rule(complete, newest, keep_last, keep_every):
    """The rule as the README states it, one step at a time."""
    upto = sorted(s for s in complete if s <= newest)
    kept = []
    for step in complete:
        if (keep_last == 0 or step > newest or step == newest or step in upto[max(0, len(upto) - keep_last):]
                or (keep_every and step % keep_every == 0)):
            kept.append(step)
    return kept


@pytest.mark.parametrize("keep_last, keep_every", [(0, 0), (0, 4), (1, 0), (2, 0), (2, 4), (3, 5), (1, 1)])
@pytest.mark.parametrize("newest", [1, 6, 12, 13])
def test_steps_to_remove_follows_the_rule(keep_last, keep_every, newest):
    complete = [1, 2, 3, 4, 6, 8, 12, 13, 16]  # 16: from an attempt that went further
    removed = steps_to_remove(complete, newest, keep_last, keep_every)
    assert sorted(set(complete) - set(removed)) == kept_by_rule(complete, newest, keep_last, keep_every)


def test_over_a_run_saving_every_step():
    """keep_last=2, keep_every=4 over 10 steps leaves the 4th, 8th and the last two."""
    complete: list[int] = []
    for step in range(1, 11):
        complete.append(step)
        for gone in steps_to_remove(complete, step, keep_last=2, keep_every=4):
            complete.remove(gone)
    assert complete == [4, 8, 9, 10]


def make(ckpt_dir, step, complete=True, suffix=""):
    tag = ckpt_dir / (tag_for(step) + suffix)
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        (tag / COMPLETE_MARKER).write_text("{}")
    return tag


def test_prune_removes_old_tags_their_universal_forms_and_older_leftovers(tmp_path):
    for step in (2, 4, 5, 6, 7):
        make(tmp_path, step)
    make(tmp_path, 2, suffix="_universal")
    make(tmp_path, 6, suffix="_universal")
    make(tmp_path, 3, complete=False)  # cut short before the new tag: never resumable
    make(tmp_path, 9, complete=False)  # newer than the new tag: left alone
    make(tmp_path, 12)  # a complete tag of an attempt that went further: left alone
    (tmp_path / "latest").write_text(tag_for(7))
    removed = prune(tmp_path, newest=7, keep_last=2, keep_every=4)
    assert [t.name for t in removed] == ["global_step2", "global_step3", "global_step5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "global_step12", "global_step4", "global_step6", "global_step6_universal", "global_step7", "global_step9",
        "latest"]
    assert not universal_companion(tmp_path / "global_step2").exists()


def test_keep_last_zero_keeps_everything(tmp_path):
    make(tmp_path, 1)
    make(tmp_path, 2, complete=False)
    make(tmp_path, 3)
    assert prune(tmp_path, newest=3, keep_last=0, keep_every=0) == []
    assert len(list(tmp_path.iterdir())) == 3
