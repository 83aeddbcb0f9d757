"""Shared fixtures: a small real corpus (stdlib files, built once per session) and the launched training runs
the test files share (tests/runs.py: each trained once per session, on first use, read-only to tests). Under
pytest-xdist both are built once for all the session's workers, in a directory they share, under file locks."""

from __future__ import annotations

import os
from pathlib import Path

# `make test` runs two workers on two cores and launches training processes beside them: one OpenMP thread per
# process (the launched ones get it from tests/helpers.py clean_env), or each process's spinning threads wait
# on the others' (docs/testing.md, "How it stays fast on 2 cores").
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from tests.file_order import weight
from tests.runs import LaunchedRuns


def pytest_collection_modifyitems(items):
    """Heaviest test files first (tests/file_order.py), each file's tests in their own order."""
    items.sort(key=lambda item: -weight(item.nodeid))


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    """A directory every test worker of this session shares: under pytest-xdist, the parent of the workers' own
    base temporary directories (each worker has basetemp/gwN); in one process, its base temporary directory."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent / "shared" if os.environ.get("PYTEST_XDIST_WORKER") else base / "shared"
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture(scope="session")
def tiny_corpus(session_dir) -> Path:
    """A directory with tokenizer.model, train/ and val/ shards from 40 stdlib files (vocab 512)."""
    from megarank.data.stdlib_corpus import ensure_stdlib_dataset, stdlib_source_files

    files = stdlib_source_files()[::15][:40]  # built under a lock in the shared cache: once for all workers
    built = ensure_stdlib_dataset(session_dir / "corpus", 512, files=files, show_progress=False)
    return built.train_dir.parent


@pytest.fixture(scope="session")
def launched(tiny_corpus, session_dir) -> LaunchedRuns:
    """`launched(name)`: the run directory of tests/runs.py LAUNCHES[name], trained the first time a test of any
    worker asks (tests/runs.py). At the end of the session, a shared run that a test changed in place (instead of
    copying it) is an error."""
    runs = LaunchedRuns(tiny_corpus, session_dir / "launched")
    yield runs
    changed = runs.changed()
    assert not changed, f"tests changed the shared runs {changed} in place; copy a run before changing it"


@pytest.fixture(scope="session")
def reference_run(launched) -> Path:
    """8 steps of the tiny GPT in one process (ZeRO-1, checkpoints at 4 and 8, ranks and weight norms logged
    every 2 steps): the single-process reference that resumed, data-parallel and preempted runs are compared
    against."""
    return launched("reference")
