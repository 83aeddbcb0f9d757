"""The gradient norm megarank computes itself at ZeRO-0 (where DeepSpeed keeps none), in one process and at TP=2
(sharded parameters counted on both ranks, replicated ones once), against the one DeepSpeed's ZeRO-1 optimizer
reports for the same steps of the same run (the single-process reference)."""

from __future__ import annotations

import math

import pytest

from tests.helpers import read_metrics, run_training


@pytest.mark.parametrize("tp", [1, 2])
def test_zero0_grad_norm_matches_deepspeeds_zero1(reference_run, tiny_corpus, tmp_path, tp):
    run_training(tmp_path / "run", tiny_corpus, "train.max_steps=2", "checkpoint.every=0", "zero.stage=0",
                 f"parallel.tp={tp}", nproc=tp)
    ours = [r["grad_norm"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    deepspeed = [r["grad_norm"] for r in read_metrics(reference_run) if "loss" in r][:2]
    assert all(math.isfinite(n) and n > 0 for n in ours)
    assert ours == pytest.approx(deepspeed, rel=1e-5)
