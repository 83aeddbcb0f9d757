"""Shared fixtures: a small real corpus (stdlib files, built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A directory with tokenizer.model, train/ and val/ shards from 40 stdlib files (vocab 512)."""
    from megarank.data.stdlib_corpus import ensure_stdlib_dataset, stdlib_source_files

    files = stdlib_source_files()[::15][:40]
    built = ensure_stdlib_dataset(tmp_path_factory.mktemp("cache"), 512, files=files, show_progress=False)
    return built.train_dir.parent


@pytest.fixture(scope="session")
def reference_run(tiny_corpus, tmp_path_factory) -> Path:
    """8 steps of the tiny GPT in one process (ZeRO-1, checkpoints at 4 and 8): the single-process reference
    that resumed, data-parallel and preempted runs are compared against."""
    from tests.helpers import run_training

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_training(run_dir, tiny_corpus, "train.max_steps=8", "checkpoint.every=4", "zero.stage=1")
    return run_dir
