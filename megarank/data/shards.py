"""Flat token shards on disk: shard_00000.bin, shard_00001.bin, ... plus index.json.

The token stream is every document followed by EOS, concatenated, then cut into fixed-size shards with no
regard for document boundaries (a document may continue in the next shard). Training reads windows from
this one stream through np.memmap, so the data never has to fit in memory and start-up costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from megarank.errors import MegarankError

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
_INDEX_FIELDS = ("format_version", "dtype", "vocab_size", "eos_id", "shards", "n_tokens", "n_docs")
_FLUSH_TOKENS = 1 << 20  # tokens buffered in a Python list before they are converted and written


def check_writable(out_dir: str | Path) -> Path:
    """Existing data is never replaced: a run still reading it would silently train on different tokens."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MegarankError(f"{out_dir} already exists and is not empty; delete it or choose another output directory")
    return out_dir


def write_shards(
    docs_token_ids: Iterable[Sequence[int]],
    out_dir: str | Path,
    *,
    vocab_size: int,
    eos_id: int,
    shard_tokens: int = 50_000_000,
    extra_meta: dict | None = None,
) -> Path:
    """Write documents (each followed by eos_id) as token shards plus index.json into out_dir; returns out_dir.

    Everything goes into a temporary sibling directory that is renamed into place at the end, so out_dir
    either holds a complete data set or does not exist.
    """
    out_dir = check_writable(out_dir)
    extra_meta = dict(extra_meta or {})
    clash = set(_INDEX_FIELDS) & extra_meta.keys()
    if clash:
        raise ValueError(f"extra_meta may not override index fields {sorted(clash)}")
    if shard_tokens <= 0:
        raise MegarankError(f"shard_tokens must be positive, got {shard_tokens}; pass e.g. 50_000_000")
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary of {vocab_size}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        writer = ShardWriter(tmp_dir, vocab_size, shard_tokens)
        n_docs = 0
        buffer: list[int] = []
        for ids in docs_token_ids:
            buffer.extend(ids)
            buffer.append(eos_id)
            n_docs += 1
            if len(buffer) >= _FLUSH_TOKENS:
                writer.write(buffer)
                buffer = []
        writer.write(buffer)
        shards = writer.close()
        if n_docs == 0:
            raise MegarankError(f"no documents to write to {out_dir}; the input is empty, check its path and split")
        index = index_fields(shards, vocab_size=vocab_size, eos_id=eos_id, n_docs=n_docs)
        (tmp_dir / INDEX_NAME).write_text(json.dumps({**index, **extra_meta}, indent=1) + "\n")
        os.replace(tmp_dir, out_dir)  # an existing empty out_dir is replaced too
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


def token_dtype(vocab_size: int) -> np.dtype:
    # ids run from 0 to vocab_size - 1, so a 65536-entry vocabulary still fits in uint16
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


def index_fields(shards: list[dict], *, vocab_size: int, eos_id: int, n_docs: int) -> dict:
    """The fields of index.json that training reads, for shards written by ShardWriter (in stream order)."""
    return {
        "format_version": FORMAT_VERSION,
        "dtype": token_dtype(vocab_size).name,
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "shards": shards,
        "n_tokens": sum(s["n_tokens"] for s in shards),
        "n_docs": n_docs,
    }


class ShardWriter:
    """Appends tokens to the current shard file in `directory`, opening the next one when it is full; close()
    returns the shard list ({file, n_tokens, sha256}) for index.json."""

    def __init__(self, directory: Path, vocab_size: int, shard_tokens: int, name_format: str = "shard_{:05d}.bin"):
        self.directory, self.vocab_size, self.shard_tokens = Path(directory), vocab_size, shard_tokens
        self.dtype, self.name_format = token_dtype(vocab_size), name_format
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self._file = None
        self._hash = None
        self._n = 0

    def write(self, tokens: list[int]) -> None:
        if not tokens:
            return
        arr = np.asarray(tokens, dtype=np.int64)
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            bad = int(arr[(arr < 0) | (arr >= self.vocab_size)][0])
            raise MegarankError(
                f"token id {bad} is outside the vocabulary of {self.vocab_size}; "
                f"the tokenizer and vocab_size passed to write_shards disagree"
            )
        arr = arr.astype(self.dtype)
        while len(arr):
            if self._file is None:
                self._open_next()
            take = min(len(arr), self.shard_tokens - self._n)
            piece = arr[:take].tobytes()
            self._file.write(piece)
            self._hash.update(piece)
            self._n += take
            arr = arr[take:]
            if self._n == self.shard_tokens:
                self._finish_current()

    def close(self) -> list[dict]:
        if self._file is not None:
            self._finish_current()
        return self.shards

    def _open_next(self) -> None:
        name = self.name_format.format(len(self.shards))
        self._file = open(self.directory / name, "wb")
        self._hash = hashlib.sha256()
        self._n = 0
        self.shards.append({"file": name})

    def _finish_current(self) -> None:
        self._file.close()
        self.shards[-1].update(n_tokens=self._n, sha256=self._hash.hexdigest())
        self._file = None


class TokenShards:
    """Read-only view of a shard directory as one token array; sizes are checked against index.json on open.

    The sha256 in the index is not checked here (hashing hundreds of GB would stall start-up); a size
    check catches the usual damage, a truncated copy.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index = _read_index(self.directory)
        self.meta: dict = index
        self.vocab_size: int = index["vocab_size"]
        self.eos_id: int = index["eos_id"]
        self.dtype = np.dtype(index["dtype"])
        self._shards = [self._open_shard(s) for s in index["shards"]]
        sizes = [len(s) for s in self._shards]
        # _starts[k] is the global position of shard k's first token; the last entry is the total
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.n_tokens: int = int(self._starts[-1])
        if self.n_tokens != index["n_tokens"]:
            raise MegarankError(
                f"{self.directory / INDEX_NAME} says n_tokens={index['n_tokens']} but its shards hold "
                f"{self.n_tokens}; the index is corrupt, rebuild the data with tools/preprocess.py"
            )

    @property
    def tokenizer_sha256(self) -> str | None:
        """sha256 of the tokenizer model the tokens were made with, as the index records it (None: not recorded)."""
        return self.meta.get("tokenizer_sha256")

    @property
    def content_sha256(self) -> str:
        """One hash of the token stream, from the index's per-shard hashes: the same data copied elsewhere (other
        path, other shard names) has the same content_sha256; re-tokenized or extended data has another."""
        digest = hashlib.sha256(f"{self.dtype.name} {self.vocab_size} {self.eos_id}\n".encode())
        for entry in self.meta["shards"]:
            digest.update(f"{entry['n_tokens']} {entry.get('sha256')}\n".encode())
        return digest.hexdigest()

    def _open_shard(self, entry: dict) -> np.memmap:
        path = self.directory / entry["file"]
        expected = entry["n_tokens"] * self.dtype.itemsize
        if not path.is_file():
            raise MegarankError(f"shard {path} listed in {INDEX_NAME} is missing; copy it again or rebuild the data")
        actual = path.stat().st_size
        if actual != expected:
            raise MegarankError(
                f"shard {path} has {actual} bytes but {INDEX_NAME} expects {expected} "
                f"(truncated or overwritten); copy it again or rebuild the data"
            )
        return np.memmap(path, dtype=self.dtype, mode="r", shape=(entry["n_tokens"],))

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the whole stream as int64, crossing shard boundaries as needed."""
        if start < 0 or length < 0 or start + length > self.n_tokens:
            raise IndexError(f"read({start}, {length}) is outside the {self.n_tokens} tokens of {self.directory}")
        out = np.empty(length, dtype=np.int64)
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        done = 0
        while done < length:
            offset = start + done - int(self._starts[k])
            take = min(length - done, len(self._shards[k]) - offset)
            out[done : done + take] = self._shards[k][offset : offset + take]
            done += take
            k += 1
        return out

    # DataLoader workers pickle the dataset; reopen the memmaps there instead of copying the data.
    def __getstate__(self) -> dict:
        return {"directory": str(self.directory)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])


def _read_index(directory: Path) -> dict:
    path = directory / INDEX_NAME
    if not path.is_file():
        raise MegarankError(
            f"{path} not found; {directory} is not a token shard directory, build one with tools/preprocess.py"
        )
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MegarankError(f"{path} is not valid JSON ({err}); rebuild the data with tools/preprocess.py") from err
    missing = [k for k in _INDEX_FIELDS if k not in index] if isinstance(index, dict) else list(_INDEX_FIELDS)
    if missing:
        raise MegarankError(f"{path} lacks {missing}; rebuild the data with tools/preprocess.py")
    if index["dtype"] not in ("uint16", "uint32"):
        raise MegarankError(f"{path} has dtype {index['dtype']!r}, not uint16/uint32; rebuild the data")
    if index["format_version"] != FORMAT_VERSION:
        raise MegarankError(
            f"{path} has format_version {index['format_version']}, this code reads {FORMAT_VERSION}; "
            f"rebuild the data with tools/preprocess.py"
        )
    return index
