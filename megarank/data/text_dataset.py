"""Fixed-length training windows over a token stream, for next-token prediction.

Sequence i covers tokens [i * seq_len, i * seq_len + seq_len + 1): its first seq_len tokens are the inputs
and its last seq_len the targets. Neighbouring windows share one token (the last target of i is the first
input of i + 1), so every token is predicted exactly once per epoch. Windows ignore document boundaries;
EOS in the stream tells the model where one document ends.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from megarank.data.shards import TokenShards
from megarank.errors import MegarankError


class TokenSequenceDataset:
    """Batches of (inputs, targets) windows addressed by sequence id, as the ResumableSampler hands them out."""

    def __init__(self, shards: TokenShards, seq_len: int) -> None:
        if seq_len <= 0:
            raise MegarankError(f"seq_len must be positive, got {seq_len}; set model.seq_len")
        self.shards = shards
        self.seq_len = seq_len
        self.num_sequences: int = (shards.n_tokens - 1) // seq_len
        if self.num_sequences == 0:
            raise MegarankError(
                f"data in {shards.directory} has {shards.n_tokens} tokens, fewer than seq_len+1 = {seq_len + 1}; "
                f"lower model.seq_len or add data"
            )

    def batch(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each int64 of shape (B, T) with B = len(ids) and T = seq_len."""
        windows = np.empty((len(ids), self.seq_len + 1), dtype=np.int64)  # (B, T+1)
        for row, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < self.num_sequences:
                raise IndexError(f"sequence id {i} is outside 0..{self.num_sequences - 1}")
            windows[row] = self.shards.read(i * self.seq_len, self.seq_len + 1)
        windows = torch.from_numpy(windows)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
