"""The bf16 path every GPU run takes, run here on CPU (DeepSpeed's bf16: bf16 compute, fp32 master weights
and optimizer state): 8 steps train and stay within bf16 tolerance of fp32 (the session's single-process
reference, tests/runs.py, on the same schedule); resume is bit for bit; activation checkpointing gives the same
losses as without; TP=2 with every lever on (compile, selective recomputation, chunked loss) stays within bf16
tolerance of one process (one launched run for both: the levers' numerics are compared one by one in process,
tests/train/test_levers.py at TP=2 in fp32)."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import run_training, train_losses

BF16 = ("train.precision=bf16", "train.max_steps=8", "checkpoint.every=4")
# bf16 keeps 8 bits of mantissa (relative rounding 2^-8 ≈ 0.4 %); over 8 steps the loss of a tiny GPT
# stays within 1 % of fp32's, where a wrong cast (say fp32 master weights lost) moves it by far more
BF16_REL = 1e-2


@pytest.fixture(scope="module")
def bf16_run(tiny_corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bf16") / "run"
    run_training(run_dir, tiny_corpus, *BF16)
    return run_dir


def test_bf16_trains_within_tolerance_of_fp32(bf16_run, reference_run):
    bf16, fp32 = train_losses(bf16_run), train_losses(reference_run)
    assert sorted(bf16) == list(range(1, 9))
    for step, expected in fp32.items():
        assert bf16[step] == pytest.approx(expected, rel=BF16_REL), f"step {step}"
    assert bf16[8] < bf16[1], "the loss falls"
    assert bf16 != fp32, "bf16 really ran in bf16"


def test_bf16_resume_is_bitwise_and_checkpointing_changes_nothing(bf16_run, tiny_corpus, tmp_path):
    """The straight run cut back to its step-4 checkpoint, resumed with every block recomputing."""
    run_dir = tmp_path / "run"
    shutil.copytree(bf16_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "global_step8")
    run_training(run_dir, tiny_corpus, *BF16, "train.activation_checkpointing=full")
    assert train_losses(run_dir) == train_losses(bf16_run)


def test_bf16_tp2_with_every_lever_matches_one_process(bf16_run, tiny_corpus, tmp_path):
    """TP=2 with compile, selective recomputation and the chunked loss, under bf16: within bf16 tolerance of the
    plain one-process bf16 run (TP's split reductions and compiled kernels may round bf16 differently)."""
    run_training(tmp_path / "levers", tiny_corpus, *BF16, "parallel.tp=2", "train.compile=true",
                 "train.activation_checkpointing=selective", "model.loss_chunk_tokens=12", nproc=2)
    reference, losses = train_losses(bf16_run), train_losses(tmp_path / "levers")
    for step, expected in reference.items():
        assert losses[step] == pytest.approx(expected, rel=BF16_REL), f"step {step}"
