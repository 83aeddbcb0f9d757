"""The stdlib corpus' test split, added to a cache built before it existed (the tiny corpus, copied): its files
against the train/val files of the cache (disjoint) and against Lib/test on disk; the train/val shards hashed
before and after (unchanged); its shards decoded back against the files with the cache's own tokenizer; a
second call and two concurrent calls against a single build; a test file that is also a train file refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import sysconfig
import threading
from pathlib import Path

import numpy as np
import pytest

import megarank.data.stdlib_corpus as stdlib_corpus
from megarank.data.shards import TokenShards
from megarank.data.stdlib_corpus import StdlibDataset, ensure_stdlib_test_split, stdlib_test_files
from megarank.data.tokenizer import Tokenizer
from megarank.errors import MegarankError

TESTS = Path(sysconfig.get_paths()["stdlib"]) / "test"


def old_cache(tiny_corpus, tmp_path) -> StdlibDataset:
    """A copy of the tiny corpus as a cache built before the test split existed: tokenizer, train/, val/."""
    root = tmp_path / "cache" / tiny_corpus.name
    shutil.copytree(tiny_corpus, root, ignore=shutil.ignore_patterns("test"))
    return StdlibDataset(root / "tokenizer.model", root / "train", root / "val")


def tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        digest.update(f"{path.relative_to(directory)}\n".encode() + path.read_bytes())
    return digest.hexdigest()


def index_files(directory: Path) -> set[str]:
    return set(json.loads((directory / "index.json").read_text())["files"])


def test_default_test_files_are_regression_tests_outside_the_corpus():
    files = stdlib_test_files()
    assert files == sorted(files) and 5 <= len(files) <= 40
    assert all(f.parent == TESTS and f.name.startswith("test_") for f in files)
    assert not set(files) & set(stdlib_corpus.stdlib_source_files())
    assert stdlib_test_files() == files  # deterministic


def test_added_to_an_old_cache_without_touching_train_or_val(tiny_corpus, tmp_path):
    dataset = old_cache(tiny_corpus, tmp_path)
    before = {split: tree_digest(dataset.train_dir.parent / split) for split in ("train", "val")}
    tokenizer_before = dataset.tokenizer_path.read_bytes()
    files = stdlib_test_files()[::8]
    assert ensure_stdlib_test_split(dataset, test_files=files, show_progress=False) == dataset.test_dir
    assert {split: tree_digest(dataset.train_dir.parent / split) for split in ("train", "val")} == before
    assert dataset.tokenizer_path.read_bytes() == tokenizer_before
    assert index_files(dataset.test_dir) == {str(f) for f in files}
    assert not index_files(dataset.test_dir) & (index_files(dataset.train_dir) | index_files(dataset.val_dir))
    assert sorted(p.name for p in dataset.train_dir.parent.iterdir()) == ["test", "tokenizer.model", "train", "val"]

    tokenizer = Tokenizer(dataset.tokenizer_path)
    shards = TokenShards(dataset.test_dir)
    stream = shards.read(0, shards.n_tokens)
    docs = [tokenizer.decode(d) for d in np.split(stream, np.flatnonzero(stream == tokenizer.eos_id) + 1)[:-1]]
    assert docs == [f.read_bytes().decode("utf-8") for f in files]
    assert shards.meta["tokenizer_sha256"] == TokenShards(dataset.train_dir).meta["tokenizer_sha256"]
    assert shards.meta["split"] == "test"


def test_built_once(tiny_corpus, tmp_path, monkeypatch):
    dataset = old_cache(tiny_corpus, tmp_path)
    real_write, writes, results = stdlib_corpus.write_shards, [], []

    def counting_write(*args, **kwargs):
        writes.append(1)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(stdlib_corpus, "write_shards", counting_write)
    start_together = threading.Barrier(2)
    files = stdlib_test_files()[:2]

    def caller():
        start_together.wait()
        results.append(ensure_stdlib_test_split(dataset, test_files=files, show_progress=False))

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [dataset.test_dir] * 2 and len(writes) == 1
    assert ensure_stdlib_test_split(dataset, test_files=files, show_progress=False) == dataset.test_dir
    assert len(writes) == 1  # a cache hit
    assert sorted(p.name for p in dataset.train_dir.parent.iterdir()) == ["test", "tokenizer.model", "train", "val"]


def test_a_training_file_is_refused(tiny_corpus, tmp_path):
    dataset = old_cache(tiny_corpus, tmp_path)
    seen = sorted(index_files(dataset.train_dir))[:1]
    with pytest.raises(MegarankError, match="is also a train or val file"):
        ensure_stdlib_test_split(dataset, test_files=[Path(seen[0])], show_progress=False)
    assert not dataset.test_dir.exists()
