"""Verified checkpoints and retention on real runs: a checkpoint with a bit-flipped or truncated file is
skipped by train.resume=auto for the newest one that passes, and the resumed run equals the uninterrupted
reference (tests/conftest.py `reference_run`) loss for loss — in one process, and in two whose ranks share
the hashing and must agree; naming a bad checkpoint is a one-line error; checkpoint.keep_last/keep_every leave
exactly the expected tags across the resume. Which tag resume picks is also checked on its own (one process,
no training) for a marker from before file records and for a run whose checkpoints all fail."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from megarank.ckpt.manifest import split_by_size, verify_tag
from megarank.ckpt.marker import COMPLETE_MARKER, Marker
from megarank.errors import MegarankError
from megarank.train.checkpoint import resolve_resume
from tests.helpers import run_training, train_losses, train_steps


def flip_one_bit(path, offset=1000):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(data)


def tags(ckpt_dir):
    return sorted((p.name for p in ckpt_dir.iterdir() if p.name.startswith("global_step")),
                  key=lambda name: (len(name), name))


def test_bad_checkpoint_is_skipped_and_retention_applies(reference_run, tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    ckpt = run_dir / "checkpoints"
    bad = ckpt / "global_step8" / "mp_rank_00_model_states.pt"
    flip_one_bit(bad)  # same size: only the checksum can tell

    named = run_training(run_dir, tiny_corpus, "train.max_steps=8", f"train.resume={ckpt / 'global_step8'}",
                         check=False)
    assert named.returncode == 2
    assert named.stderr.strip().splitlines()[-1] == (
        f"error: train.resume='{ckpt / 'global_step8'}' fails verification: '{bad}' does not match the sha256 the "
        f"marker records (corrupted on disk or in a copy); resume from another checkpoint (megarank-ckpt verify "
        f"{ckpt} checks them all)")

    (ckpt / "global_step3").mkdir()  # cut short before the new checkpoints: removed
    (ckpt / "global_step12").mkdir()  # cut short in an attempt that went further: left alone
    shutil.copytree(ckpt / "global_step4", ckpt / "global_step5_universal")  # stale: step 5 is saved anew
    resumed = run_training(run_dir, tiny_corpus, "train.max_steps=8", "checkpoint.every=1", "checkpoint.keep_last=2",
                           "checkpoint.keep_every=4")
    log = resumed.stdout + resumed.stderr
    assert (f"checkpoint global_step8 fails verification, skipping it: '{bad}' does not match the sha256" in log)
    assert "resumed from " + str(ckpt / "global_step4") in log
    assert train_losses(run_dir) == train_losses(reference_run)
    assert train_steps(run_dir) == list(range(1, 9))
    # saves 5..8 with keep_last=2, keep_every=4: 4 kept for good, then the two newest
    assert tags(ckpt) == ["global_step4", "global_step7", "global_step8", "global_step12"]
    assert (ckpt / "latest").read_text() == "global_step8"
    assert verify_tag(ckpt / "global_step8").ok


def test_two_ranks_agree_on_skipping_a_truncated_checkpoint(launched, tmp_path):
    """A copy of the session's 2-process run (tests/runs.py `dp2-zero1`: 8 steps, checkpoints at 4 and 8)."""
    run_dir = tmp_path / "run"
    shutil.copytree(launched("dp2-zero1"), run_dir)
    first = train_losses(run_dir)
    tag = run_dir / "checkpoints" / "global_step8"
    sizes = {name: r["size"] for name, r in Marker.read(tag).files.items()}
    on_rank1 = split_by_size(sizes, 2)[1][0]  # only rank 1 hashes it at resume: the ranks must share verdicts
    (tag / on_rank1).write_bytes((tag / on_rank1).read_bytes()[:-1])
    log = launched.relaunch("dp2-zero1", run_dir)
    assert log.count("checkpoint global_step8 fails verification") == 1  # rank 0 reports it, once
    assert f"'{tag / on_rank1}' has {sizes[on_rank1] - 1} bytes" in log
    assert train_losses(run_dir) == first
    assert train_steps(run_dir) == list(range(1, 9))
    assert verify_tag(tag).ok


def test_old_markers_resume_unchecked_and_all_bad_is_an_error(reference_run, tmp_path, caplog):
    ckpt = tmp_path / "checkpoints"
    shutil.copytree(reference_run / "checkpoints", ckpt)
    marker = json.loads((ckpt / "global_step8" / COMPLETE_MARKER).read_text())
    del marker["files"]  # as written before file records
    (ckpt / "global_step8" / COMPLETE_MARKER).write_text(json.dumps(marker))
    with caplog.at_level(logging.WARNING, logger="megarank"):
        assert resolve_resume("auto", ckpt) == ckpt / "global_step8"
    assert [r.getMessage() for r in caplog.records] == [
        "checkpoint global_step8 is not verifiable (its marker predates file records): resuming from it unchecked"]

    shutil.rmtree(ckpt / "global_step8")
    (ckpt / "global_step4" / "rng_rank0.pt").unlink()
    with pytest.raises(MegarankError, match=f"^no checkpoint in '{ckpt}' passes verification"):
        resolve_resume("auto", ckpt)
