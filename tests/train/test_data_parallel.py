"""Data parallelism is a layout, not a different experiment: 2 CPU processes (gloo) under ZeRO 1, 2 and 3
log the same global-batch loss per step as the single-process reference, within 1e-5 relative; and the
val_loss they log equals, within 1e-6, one process's validation of the weights they saved. The runs are the
session's shared `dp2-zero1/2/3` (tests/runs.py)."""

from __future__ import annotations

import pytest

from tests.helpers import read_metrics, train_losses
from tests.train.test_validation import val_loss_in_one_process


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_two_process_zero_matches_single_process(stage, reference_run, launched):
    run_dir = launched(f"dp2-zero{stage}")
    reference, losses = train_losses(reference_run), train_losses(run_dir)
    assert sorted(losses) == list(range(1, 9))
    for step, expected in reference.items():
        assert losses[step] == pytest.approx(expected, rel=1e-5), f"step {step}"
    assert losses[8] < losses[1], "the loss falls"
    [val] = [r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r]
    assert val == pytest.approx(val_loss_in_one_process(run_dir), rel=1e-6)
