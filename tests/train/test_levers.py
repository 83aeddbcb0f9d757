"""The performance levers in real runs under the DeepSpeed engine at TP=2, against the plain run of the same
layout (the session's shared runs, tests/runs.py):

- recomputation ('selective', every block) with the chunked loss under ZeRO-3 (parameters gathered again for
  the recompute; vocabulary-parallel chunks of 20 of the 32 tokens a micro batch holds, so one chunk is
  partial), dropout on (attention dropout on the TP-local stream, which the recompute must replay): the plain
  ZeRO-1 run's losses over 5 steps within ZeRO-3's 1e-5 relative;
- every lever together under ZeRO-3 — torch.compile of the blocks (the TP layers' collectives inside the
  compiled graph, ZeRO-3's gathering at the block boundary), full recomputation and the chunked loss: the
  plain ZeRO-1 run's losses over 8 steps within compile's 1e-4, and its logged val_loss (the compiled
  evaluation graph) one process's validation of the weights it saved within 1e-4.

Each lever's numerics on its own are compared in process: tests/parallel/test_activation_checkpointing.py
(dropout on, both RNG streams), tests/train/test_compile.py, tests/models/test_chunked_loss.py. bf16 with every
lever at TP=2 under ZeRO-1: tests/train/test_bf16.py.
"""

from __future__ import annotations

import pytest

from tests.helpers import read_metrics, train_losses
from tests.train.test_validation import val_loss_in_one_process


def assert_losses_match(losses: dict[int, float], plain: dict[int, float], steps: int, rel: float) -> None:
    assert sorted(losses) == sorted(plain) == list(range(1, steps + 1))
    for step, expected in plain.items():
        assert losses[step] == pytest.approx(expected, rel=rel), f"step {step}"


def test_recompute_and_chunked_loss_under_zero3_match_plain_with_dropout(launched):
    run = "tp2-dropout-zero3-recompute"
    assert "activation checkpointing (selective): blocks 0, 1 recompute" in launched.output(run)
    assert_losses_match(train_losses(launched(run)), train_losses(launched("tp2-dropout")), 5, rel=1e-5)


def test_every_lever_under_zero3_matches_plain(launched):
    run = "tp2-zero3-every-lever"
    output = launched.output(run)
    assert "torch.compile: 2 blocks" in output
    assert "activation checkpointing (full): blocks 0, 1 recompute" in output
    assert_losses_match(train_losses(launched(run)), train_losses(launched("tp2-zero1")), 8, rel=1e-4)
    [val] = [r["val_loss"] for r in read_metrics(launched(run)) if "val_loss" in r]
    assert val == pytest.approx(val_loss_in_one_process(launched(run)), rel=1e-4)
