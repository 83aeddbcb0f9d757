"""Data parallelism is a layout, not a different experiment: 2 CPU processes (gloo) under ZeRO 1, 2 and 3
log the same global-batch loss per step as the single-process reference, within 1e-5 relative."""

from __future__ import annotations

import pytest

from tests.helpers import run_training, train_losses


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_two_process_zero_matches_single_process(stage, reference_run, tiny_corpus, tmp_path):
    run_training(tmp_path / "run", tiny_corpus, "train.max_steps=8", "checkpoint.every=0", f"zero.stage={stage}",
                 nproc=2)
    reference, losses = train_losses(reference_run), train_losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 9))
    for step, expected in reference.items():
        assert losses[step] == pytest.approx(expected, rel=1e-5), f"step {step}"
    assert losses[8] < losses[1], "the loss falls"
