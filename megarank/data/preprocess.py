"""Text data sets (local files or the Hugging Face hub) -> token shards, through the `datasets` library.

`datasets` does the reading (json/jsonl, zstd-compressed jsonl such as the Pile, parquet, text), the
parallel tokenization (.map with num_proc) and its caching; this module only picks the loader, checks the
inputs with messages a user can act on, splits off validation documents and writes the shards.
"""

from __future__ import annotations

import glob
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np

from megarank.data.shards import TokenShards, check_writable, write_shards
from megarank.data.tokenizer import Tokenizer
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


def load_text_source(
    source: str,
    *,
    split: str = "train",
    text_key: str = "text",
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """Open `source` as a data set with a `text_key` column.

    A source that exists locally, contains a glob character, starts with '.', '/' or '~', or ends with a
    known extension is local files (a directory means every known file under it); anything else is a
    hub data set name, which only loads with internet access. All local files land in `split`.
    """
    files = _local_files(source)
    if files is None:
        where, path, options = f"hub data set '{source}'", source, {}
        fix = "check the name, or give a local file (the hub needs internet)"
    else:
        path = _builder_for(files, source)
        where = files[0] + (f" (and {len(files) - 1} more files)" if len(files) > 1 else "")
        options = {"data_files": {split: files}}
        fix = "check the file's format and --split"
        if path == "text":
            options["sample_by"] = "document"
    try:
        ds = datasets.load_dataset(path, split=split, streaming=streaming, **options)
        columns = _column_names(ds)  # a streamed set reads (and may fail) here, so inside the try
    except Exception as err:  # datasets raises many types (hub, parsing, missing split); the user needs one line
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise MegarankError(f"could not load {where}: {type(err).__name__}: {detail}; {fix}") from err
    if text_key not in columns:
        raise MegarankError(f"{where} has no column '{text_key}' (columns: {columns}); pass the right --text-key")
    return ds


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


def _column_names(ds: datasets.Dataset | datasets.IterableDataset) -> list[str]:
    if ds.column_names is not None:
        return list(ds.column_names)
    first = next(iter(ds), None)  # a streamed json set may not know its columns until it reads a row
    return list(first) if first else []


def preprocess(
    source: str,
    tokenizer_model: str | Path,
    out_dir: str | Path,
    *,
    text_key: str = "text",
    split: str = "train",
    val_fraction: float = 0.0,
    seed: int = 0,
    num_proc: int = 1,
    shard_tokens: int = 50_000_000,
) -> dict:
    """Tokenize `source` into out_dir/train (and out_dir/val when val_fraction > 0); returns their sizes.

    The validation documents are a seeded random choice of round(n * val_fraction) documents (at least
    one), so rerunning gives the same split. Each index.json records the source and the tokenizer's
    sha256, so a training run can refuse shards made with another tokenizer.
    """
    out_dir = Path(out_dir)
    if not 0.0 <= val_fraction < 1.0:
        raise MegarankError(f"val_fraction must be in [0, 1), got {val_fraction}")
    names = ["train", "val"] if val_fraction > 0 else ["train"]
    for name in names:  # fail before tokenizing, not after
        check_writable(out_dir / name)
    tokenizer = Tokenizer(tokenizer_model)
    ds = load_text_source(source, split=split, text_key=text_key)
    tokenized = ds.map(
        _encode,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "text_key": text_key},
        remove_columns=ds.column_names,
        num_proc=num_proc if num_proc > 1 else None,
        desc="tokenizing",
    )
    parts = {"train": tokenized}
    if val_fraction > 0:
        parts = _split_documents(tokenized, val_fraction, seed, source)
    meta = {
        "source": source,
        "source_split": split,
        "text_key": text_key,
        "tokenizer": str(Path(tokenizer_model).resolve()),
        "tokenizer_sha256": tokenizer.sha256,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    summary = {}
    for name, part in parts.items():
        directory = write_shards(
            _iter_ids(part),
            out_dir / name,
            vocab_size=tokenizer.vocab_size,
            eos_id=tokenizer.eos_id,
            shard_tokens=shard_tokens,
            extra_meta={**meta, "split": name},
        )
        shards = TokenShards(directory)
        summary[name] = {"n_docs": shards.meta["n_docs"], "n_tokens": shards.n_tokens, "dir": str(directory)}
    return summary


def _encode(batch: dict, tokenizer: Tokenizer, text_key: str) -> dict:
    return {"ids": tokenizer.encode_batch([text or "" for text in batch[text_key]])}


def _split_documents(ds: datasets.Dataset, val_fraction: float, seed: int, source: str) -> dict:
    n = len(ds)
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise MegarankError(
            f"{source} has {n} documents, too few to hold out val_fraction={val_fraction}; lower it or add data"
        )
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return {"train": ds.select(np.flatnonzero(~is_val)), "val": ds.select(np.flatnonzero(is_val))}


def _iter_ids(ds: datasets.Dataset) -> Iterator[list[int]]:
    for batch in ds.iter(batch_size=1024):
        yield from batch["ids"]
