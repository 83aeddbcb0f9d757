"""The gradient norm megarank computes itself at ZeRO-0 (where DeepSpeed keeps none), in one process and at TP=2
(sharded parameters counted on both ranks, replicated ones once), against the one DeepSpeed's ZeRO-1 optimizer
reports for the same steps of the same run (the single-process reference). In one process: the first two steps
of the session's shared `zero0` run (tests/runs.py)."""

from __future__ import annotations

import math

import pytest

from tests.helpers import read_metrics, run_training


def assert_matches_deepspeeds(run_dir, reference_run):
    ours = [r["grad_norm"] for r in read_metrics(run_dir) if "loss" in r][:2]
    deepspeed = [r["grad_norm"] for r in read_metrics(reference_run) if "loss" in r][:2]
    assert all(math.isfinite(n) and n > 0 for n in ours)
    assert ours == pytest.approx(deepspeed, rel=1e-5)


def test_zero0_grad_norm_matches_deepspeeds_zero1_in_one_process(reference_run, launched):
    assert_matches_deepspeeds(launched("zero0"), reference_run)


def test_zero0_grad_norm_matches_deepspeeds_zero1_at_tp2(reference_run, tiny_corpus, tmp_path):
    run_training(tmp_path / "run", tiny_corpus, "train.max_steps=2", "checkpoint.every=0", "zero.stage=0",
                 "parallel.tp=2", nproc=2)
    assert_matches_deepspeeds(tmp_path / "run", reference_run)
