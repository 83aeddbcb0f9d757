"""The default corpus, embedded in every Python install: the running interpreter's standard library source.

About 10 MB of real, varied code that needs no download, so a fresh checkout can train a small GPT offline.
The first call tokenizes it (tokenizer trained on the train split only) into a cache directory named after
the Python version, the vocab size and a hash of the file list, so later runs start at once.

Splits, all by file:
    train, val  the library's own modules (its test suites excluded); every 50th file in sorted order is val.
    test        a sample of the library's regression tests (top-level Lib/test/test_*.py, every 25th in
                sorted order), files neither train nor val can hold. Built on demand by the evaluator
                (ensure_stdlib_test_split), with the same tokenizer, into the same cache directory and under
                the same lock, so caches built before it existed gain it and train/val never change. Test
                code is not library code (more asserts and fixtures), so its perplexity sits above val's:
                compare test numbers with test numbers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from megarank.data.shards import write_shards
from megarank.data.tokenizer import Tokenizer, train_tokenizer
from megarank.errors import MegarankError

# Bump when the build recipe changes (tokenizer options, split rule, text cap): it is part of the cache
# key, so old caches built the other way are not picked up.
_BUILD_VERSION = 1
# Characters of stdlib code the tokenizer is trained on. BPE training time grows with the input; 5 MB
# keeps a 4096 vocab well under a minute on 2 cores, and the merges barely change beyond that.
_TOKENIZER_CHARS = 5_000_000
_ENCODE_BATCH_FILES = 64
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test"}
# Every 25th of the ~400 Lib/test/test_*.py files: ~16 files, ~0.5 MB, about the size of the val split.
_TEST_EVERY = 25


@dataclass(frozen=True)
class StdlibDataset:
    """Where a built stdlib corpus lives: its tokenizer model and its train/val/test shard directories (test/
    exists only once ensure_stdlib_test_split has built it)."""

    tokenizer_path: Path
    train_dir: Path
    val_dir: Path

    @property
    def test_dir(self) -> Path:
        return self.train_dir.parent / "test"


def stdlib_source_files() -> list[Path]:
    """Every .py file of the standard library, sorted, minus its test suites, installed packages and files
    that are not valid UTF-8 (a few test fixtures are deliberately broken)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [path for path in sorted(root.rglob("*.py"))
             if not _EXCLUDED_DIRS.intersection(path.relative_to(root).parts[:-1]) and _readable(path)]
    if not files:
        raise MegarankError(
            f"no standard library .py files under {root}; this Python ships without sources, "
            f"install its source package or point data.source at a preprocessed data set"
        )
    return files


def _readable(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return False
    return True


def stdlib_test_files(test_every: int = _TEST_EVERY) -> list[Path]:
    """The test split's files: every test_every-th of the standard library's top-level regression tests
    (Lib/test/test_*.py, sorted, valid UTF-8), starting with the first. stdlib_source_files() excludes every
    directory named test, so none of these is a train or val file."""
    root = Path(sysconfig.get_paths()["stdlib"]) / "test"
    files = [path for path in sorted(root.glob("test_*.py")) if _readable(path)][::test_every]
    if not files:
        raise MegarankError(f"no regression tests (test_*.py) under {root}: this Python ships without its test "
                            "suite (Debian/Ubuntu: install libpython3-testsuite), so the stdlib corpus has no test "
                            "split; pass --data DIR with a test/ split")
    return files


def split_files(files: list[Path], val_every: int = 50) -> tuple[list[Path], list[Path]]:
    """(train, val): every val_every-th file in sorted order, starting with the first, is held out.

    Splitting by file, not by token position, keeps validation code unseen as a whole, and the stride
    spreads it over the whole library instead of a few packages. Starting at index 0 means even a short
    list keeps one validation file.
    """
    if val_every < 2:
        raise ValueError(f"val_every must be at least 2, got {val_every}")
    ordered = sorted(files)
    val = ordered[::val_every]
    train = [f for i, f in enumerate(ordered) if i % val_every != 0]
    return train, val


def ensure_stdlib_dataset(
    cache_dir: str | Path,
    vocab_size: int,
    *,
    show_progress: bool = True,
    files: list[Path] | None = None,
) -> StdlibDataset:
    """The tokenizer and train/val shards of the stdlib corpus, built on first use and cached.

    `files` replaces the default file list (stdlib_source_files()); tests use it to build a small corpus.
    The build happens in a temporary directory renamed into place, under an exclusive lock on
    cache_dir/.lock, so ranks started together build it once and nobody sees a half-built cache.
    """
    files = stdlib_source_files() if files is None else sorted(Path(f) for f in files)
    cache_dir = Path(cache_dir)
    dataset = stdlib_dataset_location(cache_dir, vocab_size, files=files)
    target = dataset.train_dir.parent
    if target.is_dir():
        return dataset
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if target.is_dir():  # another process built it while we waited
            return dataset
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{target.name}.tmp-"))
        try:
            _build(files, vocab_size, tmp, show_progress)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dataset


def stdlib_dataset_location(cache_dir: str | Path, vocab_size: int, *, files: list[Path] | None = None
                            ) -> StdlibDataset:
    """Where ensure_stdlib_dataset keeps (or would build) the corpus of `files` (default: this Python's
    stdlib_source_files()); builds nothing, so its directories may not exist."""
    files = stdlib_source_files() if files is None else sorted(Path(f) for f in files)
    target = Path(cache_dir) / _cache_name(files, vocab_size)
    return StdlibDataset(target / "tokenizer.model", target / "train", target / "val")


def ensure_stdlib_test_split(
    dataset: StdlibDataset,
    *,
    show_progress: bool = True,
    test_files: list[Path] | None = None,
) -> Path:
    """dataset.test_dir, tokenized with the dataset's own tokenizer on first use; train/ and val/ are not touched.

    `test_files` replaces the default sample (stdlib_test_files()); they must be neither train nor val files.
    Built like the corpus itself: in a temporary directory renamed into place, under the cache's lock."""
    target = dataset.test_dir
    if target.is_dir():
        return target
    cache = target.parent
    if not (dataset.train_dir.is_dir() and dataset.tokenizer_path.is_file()):
        raise MegarankError(f"'{cache}' is not a built stdlib corpus (no train/ or tokenizer.model)")
    test_files = stdlib_test_files() if test_files is None else sorted(Path(f) for f in test_files)
    with open(cache.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if target.is_dir():  # another process built it while we waited
            return target
        tokenizer = Tokenizer(dataset.tokenizer_path)
        seen = set()
        for split in ("train", "val"):
            seen.update(json.loads((cache / split / "index.json").read_text()).get("files", []))
        overlap = sorted(seen.intersection(str(f) for f in test_files))
        if overlap:
            raise MegarankError(f"test file '{overlap[0]}' is also a train or val file of '{cache}'; the test split "
                                "must hold files the model never saw")
        progress = tqdm(total=len(test_files), desc="tokenizing stdlib tests", unit="file", disable=not show_progress)
        with progress:
            write_shards(  # write_shards builds in a temporary sibling and renames it into place
                _encode_files(tokenizer, test_files, progress),
                target,
                vocab_size=tokenizer.vocab_size,
                eos_id=tokenizer.eos_id,
                extra_meta=_split_meta("test", test_files, tokenizer),
            )
    return target


def _split_meta(split: str, files: list[Path], tokenizer: Tokenizer) -> dict:
    return {
        "source": "python-stdlib",
        "python": sys.version.split()[0],
        "split": split,
        "files": [str(f) for f in files],
        "tokenizer_sha256": tokenizer.sha256,
    }


def _cache_name(files: list[Path], vocab_size: int) -> str:
    digest = hashlib.sha256(f"build={_BUILD_VERSION}\n".encode())
    for path in files:
        digest.update(f"{path}\t{path.stat().st_size}\n".encode())
    major, minor = sys.version_info[:2]
    return f"stdlib-py{major}{minor}-v{vocab_size}-{digest.hexdigest()[:12]}"


def _build(files: list[Path], vocab_size: int, out: Path, show_progress: bool) -> None:
    train_files, val_files = split_files(files)
    if not train_files:
        raise MegarankError(
            f"{len(files)} source file(s) leave nothing to train on after the validation split; pass more files"
        )
    # The tokenizer sees a deterministic shuffle of the train files, so its text cap samples the whole
    # library rather than the alphabetically first packages.
    sample = list(train_files)
    random.Random(0).shuffle(sample)
    tokenizer_path = train_tokenizer(
        (_read(f) for f in sample), out / "tokenizer", vocab_size, max_chars=_TOKENIZER_CHARS
    )
    tokenizer = Tokenizer(tokenizer_path)
    progress = tqdm(total=len(files), desc="tokenizing stdlib", unit="file", disable=not show_progress)
    with progress:
        for split, members in (("train", train_files), ("val", val_files)):
            write_shards(
                _encode_files(tokenizer, members, progress),
                out / split,
                vocab_size=tokenizer.vocab_size,
                eos_id=tokenizer.eos_id,
                extra_meta=_split_meta(split, members, tokenizer),
            )


def _encode_files(tokenizer: Tokenizer, files: list[Path], progress: tqdm) -> Iterator[list[int]]:
    for i in range(0, len(files), _ENCODE_BATCH_FILES):
        batch = files[i : i + _ENCODE_BATCH_FILES]
        yield from tokenizer.encode_batch([_read(f) for f in batch])
        progress.update(len(batch))


def _read(path: Path) -> str:
    # newline="" keeps \r\n as written, so decoded shards match the file bytes exactly
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()
