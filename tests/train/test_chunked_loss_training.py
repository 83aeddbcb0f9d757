"""The chunked loss in a real run at TP=2 (vocabulary-parallel head and loss, chunks of 20 of the 32 tokens a
micro batch holds, so one chunk is partial) logs the single-process plain run's losses within TP's 1e-5."""

from __future__ import annotations

import pytest

from tests.helpers import run_training, train_losses


def test_chunked_loss_tp2_matches_single_process(reference_run, tiny_corpus, tmp_path):
    run_training(tmp_path / "run", tiny_corpus, "train.max_steps=8", "checkpoint.every=0", "zero.stage=1",
                 "parallel.tp=2", "model.loss_chunk_tokens=20", nproc=2)
    reference, losses = train_losses(reference_run), train_losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 9))
    for step, expected in reference.items():
        assert losses[step] == pytest.approx(expected, rel=1e-5), f"step {step}"
