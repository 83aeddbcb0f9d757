"""Stdlib corpus: the file list against the stdlib directory on disk, the split against its stated rule, and a
small build's shards decoded back against the source files; a second call and two concurrent calls against
a single build."""

import os
import sys
import sysconfig
import threading
from pathlib import Path

import numpy as np
import pytest

import megarank.data.stdlib_corpus as stdlib_corpus
from megarank.data.shards import TokenShards
from megarank.data.stdlib_corpus import StdlibDataset, ensure_stdlib_dataset, split_files, stdlib_source_files
from megarank.data.tokenizer import Tokenizer
from megarank.errors import MegarankError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
VOCAB = 400


@pytest.fixture(scope="module")
def files() -> list[Path]:
    return stdlib_source_files()


@pytest.fixture(scope="module")
def small_files(files) -> list[Path]:
    return files[::20][:40]  # spread over the library, ~40 files


def test_source_files_are_the_stdlib_without_tests_or_packages(files):
    assert files == sorted(files) and len(files) > 100
    assert STDLIB / "os.py" in files and STDLIB / "json" / "decoder.py" in files
    for path in files:
        parts = path.relative_to(STDLIB).parts
        assert path.suffix == ".py"
        assert not {"test", "tests", "idle_test", "site-packages", "dist-packages"} & set(parts[:-1]), path
    excluded_on_disk = [*(STDLIB / "test").glob("test_*.py"), *(STDLIB / "unittest" / "test").glob("*.py")]
    assert excluded_on_disk and not set(excluded_on_disk) & set(files)


def test_split_is_every_50th_file_disjoint_and_order_independent(files):
    train, val = split_files(files)
    assert val == files[::50] and set(train) | set(val) == set(files) and not set(train) & set(val)
    assert split_files(list(reversed(files))) == (train, val)
    assert split_files(files[:10], val_every=4) == ([f for i, f in enumerate(files[:10]) if i % 4], files[:10:4])


@pytest.fixture(scope="module")
def built(small_files, tmp_path_factory) -> tuple[Path, StdlibDataset]:
    cache = tmp_path_factory.mktemp("cache")
    return cache, ensure_stdlib_dataset(cache, VOCAB, show_progress=False, files=small_files)


def test_cache_layout(built):
    cache, dataset = built
    major, minor = sys.version_info[:2]
    assert dataset.tokenizer_path.parent.name.startswith(f"stdlib-py{major}{minor}-v{VOCAB}-")
    assert dataset.tokenizer_path.is_file() and dataset.train_dir.is_dir() and dataset.val_dir.is_dir()
    assert sorted(p.name for p in cache.iterdir()) == [".lock", dataset.tokenizer_path.parent.name]  # no temp dirs


@pytest.mark.parametrize("split", ["train", "val"])
def test_shards_decode_back_to_the_source_files(built, small_files, split):
    _, dataset = built
    tokenizer = Tokenizer(dataset.tokenizer_path)
    shards = TokenShards(getattr(dataset, f"{split}_dir"))
    stream = shards.read(0, shards.n_tokens)
    ends = np.flatnonzero(stream == tokenizer.eos_id)
    docs = [tokenizer.decode(d) for d in np.split(stream, ends + 1)[:-1]]
    expected = split_files(small_files)[split == "val"]
    assert docs == [p.read_bytes().decode("utf-8") for p in expected]
    assert shards.meta["tokenizer_sha256"] == tokenizer.sha256 and shards.meta["split"] == split


def test_second_call_is_a_cache_hit(built, small_files, monkeypatch):
    cache, dataset = built
    mtimes = [os.stat(p).st_mtime_ns for p in (dataset.tokenizer_path, dataset.train_dir / "index.json")]
    monkeypatch.setattr(stdlib_corpus, "train_tokenizer", _must_not_build)
    assert ensure_stdlib_dataset(cache, VOCAB, show_progress=False, files=small_files) == dataset
    assert [os.stat(p).st_mtime_ns for p in (dataset.tokenizer_path, dataset.train_dir / "index.json")] == mtimes


def _must_not_build(*args, **kwargs):
    raise AssertionError("cache hit expected, but the tokenizer was trained again")


def test_concurrent_callers_build_once(small_files, tmp_path, monkeypatch):
    real_train, trainings, results = stdlib_corpus.train_tokenizer, [], []

    def counting_train(*args, **kwargs):
        trainings.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(stdlib_corpus, "train_tokenizer", counting_train)
    start_together = threading.Barrier(2)

    def caller():
        start_together.wait()
        results.append(ensure_stdlib_dataset(tmp_path, VOCAB, show_progress=False, files=small_files[:10]))

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1] and len(trainings) == 1


def test_too_few_files_is_an_error(small_files, tmp_path):
    with pytest.raises(MegarankError, match="nothing to train on"):
        ensure_stdlib_dataset(tmp_path, VOCAB, show_progress=False, files=small_files[:1])
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]
