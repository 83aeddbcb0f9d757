"""Resuming at another data-parallel size (a preempted job restarted on fewer or more nodes) goes through
DeepSpeed's universal checkpoint and continues the single-process reference's losses within 1e-5 (DP 1 -> 2
under ZeRO-1). Changing TP, the ZeRO stage, or DP under ZeRO-3 on resume is a clear error."""

from __future__ import annotations

import json
import shutil

import pytest

from megarank.errors import MegarankError
from megarank.ckpt.tags import COMPLETE_MARKER
from megarank.train.checkpoint import needs_universal
from tests.helpers import run_training, train_losses


def assert_continues_reference(run_dir, reference_run):
    reference, losses = train_losses(reference_run), train_losses(run_dir)
    assert sorted(losses) == list(range(1, 9))
    for step in range(5, 9):
        assert losses[step] == pytest.approx(reference[step], rel=1e-5), f"step {step}"


def test_dp1_checkpoint_resumes_on_two_processes(reference_run, tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "global_step8")
    proc = run_training(run_dir, tiny_corpus, "train.max_steps=8", "checkpoint.every=4", "zero.stage=1", nproc=2)
    assert "universal checkpoint" in proc.stdout + proc.stderr
    assert_continues_reference(run_dir, reference_run)
    assert json.loads((run_dir / "checkpoints/global_step8" / COMPLETE_MARKER).read_text())["layout"]["dp"] == 2


def test_tp_or_zero_stage_change_is_refused(tmp_path):
    tag = tmp_path / "global_step4"
    tag.mkdir()
    (tag / COMPLETE_MARKER).write_text(json.dumps({"step": 4, "zero_stage": 1,
                                                   "layout": {"tp": 2, "dp": 2, "world_size": 4}}))
    assert needs_universal(tag, tp=2, dp=2, zero_stage=1) is False
    assert needs_universal(tag, tp=2, dp=1, zero_stage=1) is True
    with pytest.raises(MegarankError, match="resume with parallel.tp=2"):
        needs_universal(tag, tp=1, dp=4, zero_stage=1)
    with pytest.raises(MegarankError, match="resume with zero.stage=1"):
        needs_universal(tag, tp=2, dp=2, zero_stage=2)
    zero3 = tmp_path / "zero3" / "global_step4"
    zero3.mkdir(parents=True)
    (zero3 / COMPLETE_MARKER).write_text(json.dumps({"step": 4, "zero_stage": 3,
                                                     "layout": {"tp": 1, "dp": 2, "world_size": 2}}))
    with pytest.raises(MegarankError, match="launch 2 processes"):
        needs_universal(zero3, tp=1, dp=1, zero_stage=3)
