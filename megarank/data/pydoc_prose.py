"""A second embedded corpus, English prose: the documentation topics shipped with Python (`pydoc_data.topics`,
the text `help('for')` prints), tokenized with a tokenizer the caller gives, so a model pretrained on the stdlib
code corpus can be fine-tuned on prose with its own vocabulary (the plasticity experiment).

About 80 topics, ~0.5 MB of reference-manual prose (with some code in it); nothing is downloaded. Each topic
is one document. Splits, by topic in sorted order: every 8th topic (starting with the first) is val, the rest
train. The shards land in <cache_dir>/pydoc-prose-py<ver>-<tokenizer sha256[:12]>-b<build>/{train,val}, a
directory `data.path` can point at, with `data.tokenizer` the same .model file (its index records the
tokenizer's sha256, which the training data check and train.init_from compare).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from megarank.data.shards import write_shards
from megarank.data.tokenizer import Tokenizer
from megarank.errors import MegarankError

# Bump when the recipe changes (split rule, document text): part of the cache name.
_BUILD_VERSION = 1
VAL_EVERY = 8
"""Every VAL_EVERY-th topic in sorted order is held out for validation (10 of 79 on Python 3.11/3.12)."""


@dataclass(frozen=True)
class ProseDataset:
    """Where a built prose corpus lives: a directory with train/ and val/ shards (data.path)."""

    root: Path

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def val_dir(self) -> Path:
        return self.root / "val"


def pydoc_topics() -> dict[str, str]:
    """Topic name -> its text, sorted by name; one line when this Python ships without pydoc_data."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise MegarankError("this Python has no pydoc_data.topics (some distributions strip it); the prose "
                            "corpus needs it: install the full Python, or fine-tune on your own data.path") from None
    return {name: topics[name] for name in sorted(topics)}


def split_topics(names: list[str], val_every: int = VAL_EVERY) -> tuple[list[str], list[str]]:
    """(train, val) topic names: every val_every-th in sorted order, from the first, is val."""
    if val_every < 2:
        raise ValueError(f"val_every must be at least 2, got {val_every}")
    ordered = sorted(names)
    return ([n for i, n in enumerate(ordered) if i % val_every], ordered[::val_every])


def prose_location(cache_dir: str | Path, tokenizer_path: str | Path) -> ProseDataset:
    """Where ensure_prose_dataset keeps (or would build) the corpus for this tokenizer; builds nothing."""
    sha = Tokenizer(tokenizer_path).sha256
    major, minor = sys.version_info[:2]
    return ProseDataset(Path(cache_dir).expanduser() / f"pydoc-prose-py{major}{minor}-{sha[:12]}-b{_BUILD_VERSION}")


def ensure_prose_dataset(cache_dir: str | Path, tokenizer_path: str | Path,
                         topics: dict[str, str] | None = None) -> ProseDataset:
    """The prose corpus tokenized with `tokenizer_path`, built on first use under a lock (like the stdlib
    corpus: in a temporary directory renamed into place). `topics` replaces pydoc_topics() (tests)."""
    tokenizer_path = Path(tokenizer_path).expanduser()
    if not tokenizer_path.is_file():
        raise MegarankError(f"tokenizer '{tokenizer_path}' not found; give the .model the pretrained run used")
    dataset = prose_location(cache_dir, tokenizer_path)
    if dataset.root.is_dir():
        return dataset
    topics = pydoc_topics() if topics is None else topics
    dataset.root.parent.mkdir(parents=True, exist_ok=True)
    with open(dataset.root.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if dataset.root.is_dir():  # another process built it while we waited
            return dataset
        tmp = Path(tempfile.mkdtemp(dir=dataset.root.parent, prefix=f".{dataset.root.name}.tmp-"))
        try:
            _build(topics, Tokenizer(tokenizer_path), tokenizer_path, tmp)
            os.replace(tmp, dataset.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dataset


def _build(topics: dict[str, str], tokenizer: Tokenizer, tokenizer_path: Path, out: Path) -> None:
    train, val = split_topics(list(topics))
    if not train:
        raise MegarankError(f"{len(topics)} topic(s) leave nothing to train on after the validation split")
    for split, names in (("train", train), ("val", val)):
        write_shards(tokenizer.encode_batch([topics[n] for n in names]), out / split,
                     vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id,
                     extra_meta={"source": "pydoc_data.topics", "python": sys.version.split()[0], "split": split,
                                 "topics": names, "tokenizer": str(tokenizer_path),
                                 "tokenizer_sha256": tokenizer.sha256})
