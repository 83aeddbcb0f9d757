"""Divergence and loss spikes.

A real run that diverges (optim.lr=30, no clipping, two processes) against the rule: every rank stops at the
first step whose loss or gradient norm is not finite, with one error line naming the step and the value and a
non-zero exit, before that step is saved — `latest` names the step before it and no tag comes after it. The
spike detector against running means worked out by hand, and the same run's loss_spike records against the
spikes worked out from the losses it logged.
"""

from __future__ import annotations

import math

import pytest

from megarank.train.checkpoint import complete_checkpoints
from megarank.train.divergence import LossSpikeDetector
from tests.helpers import read_metrics, run_training


def test_spike_detector_against_hand_worked_means():
    detector = LossSpikeDetector(factor=2.0, window=3)
    losses = [4.0, 3.0, 2.0, 6.1, 3.0, 3.0, float("nan"), 30.0]
    # window full from the 4th loss: mean(4, 3, 2) = 3 -> 6.1 > 6 spikes; then mean(3, 2, 6.1) = 3.7 and
    # mean(2, 6.1, 3) = 3.7 -> no; nan is no spike and stays out; mean(6.1, 3, 3) = 4.03 -> 30 spikes
    flagged = [detector.check(x) for x in losses]
    assert flagged[:3] == [None] * 3 and flagged[3] == pytest.approx(3.0)
    assert flagged[4:7] == [None] * 3 and flagged[7] == pytest.approx(12.1 / 3)


def test_factor_zero_never_flags():
    detector = LossSpikeDetector(factor=0.0, window=1)
    assert [detector.check(x) for x in (1.0, 1e9, 1.0)] == [None] * 3


def test_diverging_run_warns_on_spikes_then_stops_before_saving(tiny_corpus, tmp_path):
    """lr=100 without clipping: the loss jumps for a few finite steps, then the gradient norm overflows (at lr=30
    it can stay finite for 30 steps: it peaks near 5e11 on this machine)."""
    run_dir = tmp_path / "run"
    proc = run_training(run_dir, tiny_corpus, "optim.lr=100", "optim.grad_clip=0", "train.max_steps=30",
                        "checkpoint.every=1", "zero.stage=1", "train.spike_window=2", "analysis.every=0", nproc=2,
                        check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]

    records = read_metrics(run_dir)
    training = [r for r in records if "loss" in r]
    diverged = training[-1]
    step = diverged["step"]
    assert [r["step"] for r in training] == list(range(1, step + 1))
    assert not (math.isfinite(diverged["loss"]) and math.isfinite(diverged["grad_norm"]))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in training[:-1])
    assert errors[0].startswith(f"error: step {step}: ")
    assert f"the run stopped before saving it — latest still names global_step{step - 1}. Lower optim.lr" in errors[0]
    assert [s for s, _ in complete_checkpoints(run_dir / "checkpoints")] == list(range(1, step))
    assert (run_dir / "checkpoints" / "latest").read_text() == f"global_step{step - 1}"

    # spikes: exactly the finite steps whose loss is over 3 × the mean of the two before, worked out from the log
    loss = {r["step"]: r["loss"] for r in training}
    means = {s: (loss[s - 1] + loss[s - 2]) / 2 for s in range(3, step)}
    expected = {s: mean for s, mean in means.items() if loss[s] > 3 * mean}
    spikes = [r for r in records if r.get("warning") == "loss_spike"]
    assert expected, "the run should spike before it diverges"
    assert {r["step"]: r["spike_running_mean"] for r in spikes} == pytest.approx(expected)
    assert all(r["spike_loss"] == loss[r["step"]] for r in spikes)
    assert sum("loss spike" in line for line in proc.stderr.splitlines()) == len(spikes)
