"""Shared fixtures: a small real corpus (stdlib files, built once per session) and the launched training runs
the test files share (tests/runs.py: each trained once per session, on first use, read-only to tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runs import LaunchedRuns


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A directory with tokenizer.model, train/ and val/ shards from 40 stdlib files (vocab 512)."""
    from megarank.data.stdlib_corpus import ensure_stdlib_dataset, stdlib_source_files

    files = stdlib_source_files()[::15][:40]
    built = ensure_stdlib_dataset(tmp_path_factory.mktemp("cache"), 512, files=files, show_progress=False)
    return built.train_dir.parent


@pytest.fixture(scope="session")
def launched(tiny_corpus, tmp_path_factory) -> LaunchedRuns:
    """`launched(name)`: the run directory of tests/runs.py LAUNCHES[name], trained the first time a test asks.
    At the end of the session, a shared run that a test changed in place (instead of copying it) is an error."""
    runs = LaunchedRuns(tiny_corpus, tmp_path_factory.mktemp("launched"))
    yield runs
    changed = runs.changed()
    assert not changed, f"tests changed the shared runs {changed} in place; copy a run before changing it"


@pytest.fixture(scope="session")
def reference_run(launched) -> Path:
    """8 steps of the tiny GPT in one process (ZeRO-1, checkpoints at 4 and 8, ranks and weight norms logged
    every 2 steps): the single-process reference that resumed, data-parallel and preempted runs are compared
    against."""
    return launched("reference")
