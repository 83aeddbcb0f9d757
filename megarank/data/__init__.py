"""Data pipeline: tokenizer, token shards on disk, the resumable sampler, training windows, and the corpora
(the embedded Python stdlib, or any `datasets` source via megarank.data.preprocess, which is not imported
here because importing `datasets` costs seconds that training start-up does not need)."""

import importlib

# Imported on first use (PEP 562): preprocessing workers import this package and must not pay for torch,
# which the sampler and the training windows need and the tokenizer does not.
_EXPORTS = {
    "ResumableSampler": "sampler",
    "StdlibDataset": "stdlib_corpus",
    "TokenSequenceDataset": "text_dataset",
    "TokenShards": "shards",
    "Tokenizer": "tokenizer",
    "ensure_stdlib_dataset": "stdlib_corpus",
    "train_tokenizer": "tokenizer",
    "write_shards": "shards",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'megarank.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"megarank.data.{_EXPORTS[name]}"), name)


__all__ = [
    "ResumableSampler",
    "StdlibDataset",
    "TokenSequenceDataset",
    "TokenShards",
    "Tokenizer",
    "ensure_stdlib_dataset",
    "train_tokenizer",
    "write_shards",
]
