"""Data pipeline: tokenizer, token shards on disk, the resumable sampler, training windows, and the corpora
(the embedded Python stdlib, or any `datasets` source via megarank.data.preprocess, which is not imported
here because importing `datasets` costs seconds that training start-up does not need)."""

from megarank.data.sampler import ResumableSampler
from megarank.data.shards import TokenShards, write_shards
from megarank.data.stdlib_corpus import StdlibDataset, ensure_stdlib_dataset
from megarank.data.text_dataset import TokenSequenceDataset
from megarank.data.tokenizer import Tokenizer, train_tokenizer

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
