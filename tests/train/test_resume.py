"""Resume is exact: N/2 steps + save + load + N/2 steps equals N steps straight, bit for bit (CPU, fp32),
in losses, logged records and final weights — in one process (the session's `reference` run, cut back) and in
two (its `dp2-zero3` run, cut back; tests/runs.py)."""

from __future__ import annotations

import shutil

import torch

from megarank.ckpt.tags import complete_checkpoints
from tests.helpers import run_training, train_losses, train_steps


def final_weights(run_dir):
    step, tag = complete_checkpoints(run_dir / "checkpoints")[-1]
    return step, torch.load(tag / "mp_rank_00_model_states.pt", weights_only=False)["module"]


def test_resume_is_bitwise_identical(reference_run, tiny_corpus, tmp_path):
    """checkpoint.dir defaults to ${train.run_dir}/checkpoints, so the copied run resumes from its own copy."""
    # the reference run cut back to its step-4 checkpoint, as if it had died after step 8's records but
    # before its last save: the resumed attempt must replace records 5..8, not duplicate them
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "global_step8")
    run_training(run_dir, tiny_corpus, "train.max_steps=8", "checkpoint.every=4", "zero.stage=1")

    assert train_losses(run_dir) == train_losses(reference_run)
    steps = train_steps(run_dir)
    assert steps == sorted(set(steps)) == list(range(1, 9)), "each step logged exactly once after resume"
    step, resumed = final_weights(run_dir)
    _, straight = final_weights(reference_run)
    assert step == 8
    for name, tensor in straight.items():
        assert torch.equal(resumed[name], tensor), name


def test_resume_two_processes_zero3(launched, tmp_path):
    straight, resumed = launched("dp2-zero3"), tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "global_step8")
    launched.relaunch("dp2-zero3", resumed)
    assert train_losses(resumed) == train_losses(straight)
    assert train_steps(resumed) == list(range(1, 9))
