"""Where documents come from: local files or a Hugging Face hub data set, read through `datasets` streaming.

`datasets` does the reading (json/jsonl, zstd-compressed jsonl such as the Pile, parquet, text) without
converting anything to Arrow on disk. A source is cut into parts, one per input file (a hub set's files are its
shards), because a part is what preprocessing tokenizes in one worker, records when finished and skips on a
rerun. Bad input is one line naming the file and, for jsonl, the line: `datasets` reports neither, so a failing
part is re-read line by line to find it.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Reading text needs no tensors, but `datasets` imports torch when it loads a builder (+500 MB in the main
# process and in every worker) unless told not to; the workers inherit the setting. A user's own value wins.
os.environ.setdefault("USE_TORCH", "0")
import datasets  # noqa: E402

from megarank.errors import MegarankError

# file name ending -> datasets builder. A .txt file is one document (sample_by="document"): for code
# and books, a line is not a document and splitting there would scatter EOS through the text.
_BUILDERS = {
    ".jsonl.zst": "json",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".txt": "text",
}
_READ_BATCH = 256  # documents per batch from datasets; a batch is what a worker holds in memory


@dataclass(frozen=True)
class Part:
    """One input file of a source (or one shard of a hub data set): the unit that is tokenized, recorded and
    skipped on a rerun. `identity` changes when the file does, so a changed file is tokenized again."""

    source: str
    split: str
    index: int
    n_parts: int
    name: str  # the file's path, or 'hub-name[shard k of n]'
    builder: str | None  # None: a hub data set
    identity: dict

    @property
    def is_local(self) -> bool:
        return self.builder is not None


def place_hash(*place: object) -> int:
    """A 64-bit hash of a document's place (seed, part, index...): seeded choices that need no shared random
    state, so they are the same in any worker, for any number of workers and on a rerun."""
    digest = hashlib.blake2b(":".join(map(str, place)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def source_parts(source: str, *, split: str = "train", text_key: str = "text") -> list[Part]:
    """The parts of `source` in order: its files (sorted), or a hub set's shards. Opens the source once, so a
    bad path, format or text key fails here, before any work starts."""
    files = _local_files(source)
    if files is None:
        ds = _open(source, None, source, split, text_key)
        n = ds.num_shards
        return [Part(source, split, k, n, f"{source}[shard {k} of {n}]", None, {"hub": source, "shard": k, "of": n})
                for k in range(n)]
    builder = _builder_for(files, source)
    _open(builder, files[:1], source, split, text_key)  # the format and the key, on the first file
    return [Part(source, split, k, len(files), f, builder, {"file": str(Path(f).resolve()), "bytes": Path(f).stat().st_size})
            for k, f in enumerate(files)]


def part_texts(part: Part, text_key: str) -> Iterator[str]:
    """Every document of `part` in file order. A document without text, a line that is not JSON or a damaged
    file raises a one-line MegarankError naming the file and line."""
    n_docs = 0
    try:
        if part.is_local:
            ds = _load(part.builder, [part.name], part.split)
        else:
            ds = _load(part.source, None, part.split).shard(num_shards=part.n_parts, index=part.index)
        if text_key not in _column_names(ds):
            raise _bad_document(part, text_key, 0)
        batches = ds.select_columns([text_key]).iter(batch_size=_READ_BATCH)
        for batch in batches:
            texts = batch[text_key]
            if any(not isinstance(text, str) for text in texts):
                bad = n_docs + next(i for i, t in enumerate(texts) if not isinstance(t, str))
                raise _bad_document(part, text_key, bad)
            n_docs += len(texts)
            yield from texts
    except MegarankError:
        raise
    except Exception as err:  # datasets, pyarrow, zstandard and fsspec raise many types; the user needs one line
        raise _read_error(part, text_key, n_docs, err) from err


def _load(path: str, files: list[str] | None, split: str) -> datasets.IterableDataset:
    """datasets.load_dataset, streaming, of a hub set (files None) or of local files with their builder."""
    options = {} if files is None else {"data_files": {split: files}}
    if path == "text":
        options["sample_by"] = "document"
    return datasets.load_dataset(path, split=split, streaming=True, **options)


def _open(path: str, files: list[str] | None, where: str, split: str, text_key: str) -> datasets.IterableDataset:
    """_load, with a failure to load or a missing text column as one line a user can act on."""
    if files is None:
        fix, where = "check the name, or give a local file (the hub needs internet)", f"hub data set '{where}'"
    else:
        fix = "check the file's format and --split"
        where = files[0] + (f" (and {len(files) - 1} more files)" if len(files) > 1 else "")
    try:
        ds = _load(path, files, split)
        columns = _column_names(ds)  # a streamed set reads (and may fail) here, so inside the try
    except Exception as err:  # datasets raises many types (hub, parsing, missing split); the user needs one line
        raise MegarankError(f"could not load {where}: {_first_line(err)}; {fix}") from err
    if text_key not in columns:
        raise MegarankError(f"{where} has no column '{text_key}' (columns: {columns}); pass the right --text-key")
    return ds


def _bad_document(part: Part, text_key: str, doc_index: int) -> MegarankError:
    where = _locate(part, text_key) if part.builder == "json" else None
    return MegarankError(where or f"{part.name}: document {doc_index + 1} has no text under '{text_key}'; "
                                  f"fix or drop it, or pass the right --text-key")


def _read_error(part: Part, text_key: str, n_docs: int, err: Exception) -> MegarankError:
    where = _locate(part, text_key) if part.builder == "json" else None
    return MegarankError(where or f"{part.name}: {_first_line(err)} after document {n_docs}; "
                                  f"the file is damaged, copy it again")


def _locate(part: Part, text_key: str) -> str | None:
    """The first bad line of a jsonl part as an error message, or None when every line reads."""
    line_no = 0
    try:
        with _open_lines(part.name) as lines:
            for line_no, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    return f"{part.name}:{line_no}: not JSON ({err.msg}); fix or drop the line"
                if not isinstance(row, dict) or not isinstance(row.get(text_key), str):
                    keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                    return f"{part.name}:{line_no}: no text under '{text_key}' (has {keys}); fix or drop the line"
    except Exception as err:  # OSError, UnicodeDecodeError, zstandard.ZstdError (derives from Exception only)
        return f"{part.name}: {_first_line(err)} after line {line_no}; the file is damaged, copy it again"
    return None


def _open_lines(path: str) -> io.TextIOBase:
    if path.endswith(".zst"):
        import zstandard

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True),
                                encoding="utf-8")
    return open(path, encoding="utf-8")


def _first_line(err: Exception) -> str:
    detail = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {detail}" if detail else type(err).__name__


def _local_files(source: str) -> list[str] | None:
    """The files a local source names, or None when it is not a local path (a hub name)."""
    path = Path(source).expanduser()
    if any(c in source for c in "*?["):
        files = sorted(glob.glob(str(path), recursive=True))
        if not files:
            raise MegarankError(f"no files match {source}; check the pattern")
        return files
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and _extension(p.name))
        if not files:
            raise MegarankError(f"{source} holds no {'/'.join(_BUILDERS)} files; point at a data file or directory")
        return files
    if path.is_file():
        return [str(path)]
    if source.startswith((".", "/", "~")) or _extension(source):
        raise MegarankError(f"{source} not found; check the path (or give a hub data set name)")
    return None


def _extension(name: str) -> str | None:
    return next((ext for ext in _BUILDERS if name.endswith(ext)), None)


def _builder_for(files: list[str], source: str) -> str:
    extensions = {_extension(f) for f in files}
    if None in extensions:
        unknown = next(f for f in files if _extension(f) is None)
        raise MegarankError(f"unknown format of {unknown}; use one of {', '.join(_BUILDERS)}")
    builders = {_BUILDERS[e] for e in extensions}
    if len(builders) > 1:
        raise MegarankError(f"{source} mixes formats {sorted(extensions)}; preprocess each format separately")
    if ".jsonl.zst" in extensions and importlib.util.find_spec("zstandard") is None:
        raise MegarankError(f"reading {source} (.zst) needs the zstandard package; pip install zstandard")
    return builders.pop()


def _column_names(ds: datasets.IterableDataset) -> list[str]:
    if ds.column_names is not None:
        return list(ds.column_names)
    first = next(iter(ds), None)  # a streamed json set may not know its columns until it reads a row
    return list(first) if first else []
