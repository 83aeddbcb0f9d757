"""Text data for the GPT, and which sequences each rank trains on: the global batch of step s is sampler positions
[s * global_batch, (s + 1) * global_batch), dealt out to (micro step, data-parallel rank) slots.

Because the global batch is the same set of sequences whatever the layout, the global-batch mean loss (what
we log) is the same at every data-parallel size; and since the sampler is a pure function of its position,
resuming at step s replays exactly what a straight run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megarank.config.schema import DataConfig
from megarank.data.sampler import ResumableSampler
from megarank.data.shards import TokenShards
from megarank.data.stdlib_corpus import ensure_stdlib_dataset
from megarank.data.text_dataset import TokenSequenceDataset
from megarank.errors import MegarankError


@dataclass
class TextData:
    train: TokenSequenceDataset
    val: TokenSequenceDataset | None
    sampler: ResumableSampler
    vocab_size: int
    source: str


def open_text_data(cfg: DataConfig, *, seq_len: int, seed: int, show_progress: bool) -> TextData:
    """Token shards for training (and validation when present); the embedded corpus is built on first use."""
    if cfg.path is None:
        built = ensure_stdlib_dataset(Path(cfg.cache_dir).expanduser(), cfg.tokenizer_vocab,
                                      show_progress=show_progress)
        train_dir, val_dir, source = built.train_dir, built.val_dir, f"stdlib ({built.train_dir.parent})"
    else:
        root = Path(cfg.path).expanduser()
        train_dir, val_dir, source = root / "train", root / "val", str(root)
        if not (train_dir / "index.json").is_file():
            raise MegarankError(f"data.path '{root}' has no train/index.json; make shards with "
                                "tools/preprocess.py SOURCE --tokenizer M --out DIR, or unset data.path")
    train_shards = TokenShards(train_dir)
    train = TokenSequenceDataset(train_shards, seq_len)
    val = TokenSequenceDataset(TokenShards(val_dir), seq_len) if (val_dir / "index.json").is_file() else None
    return TextData(train=train, val=val, sampler=ResumableSampler(train.num_sequences, seed),
                    vocab_size=train_shards.vocab_size, source=source)


def sample_start(*, step: int, micro_step: int, dp_rank: int, dp_size: int, micro_batch: int,
                 global_batch: int) -> int:
    """First sampler position of this rank's micro batch (micro_step) within step's global batch."""
    return step * global_batch + (micro_step * dp_size + dp_rank) * micro_batch


def micro_batch(data: TextData, *, step: int, micro_step: int, dp_rank: int, dp_size: int, micro_batch: int,
                global_batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (micro_batch, seq_len) for this rank's slot in step's global batch."""
    start = sample_start(step=step, micro_step=micro_step, dp_rank=dp_rank, dp_size=dp_size,
                         micro_batch=micro_batch, global_batch=global_batch)
    x, y = data.train.batch(data.sampler.indices(start, micro_batch))
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def val_batch(data: TextData, *, index: int, dp_rank: int, dp_size: int, micro_batch: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The index-th validation micro batch of this rank: a fixed, unshuffled slice, wrapping around."""
    n = data.val.num_sequences
    start = (index * dp_size + dp_rank) * micro_batch
    x, y = data.val.batch([(start + i) % n for i in range(micro_batch)])
    return x.to(device), y.to(device)
