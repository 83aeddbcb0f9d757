"""Which sequence the n-th sample of a run is, as a pure function of (seed, n), so resuming is exact.

A run consumes samples at global positions 0, 1, 2, ... across epochs. Position p falls in epoch
e = p // num_sequences and takes element p % num_sequences of that epoch's permutation, which is
torch.randperm(num_sequences) drawn from a generator seeded with seed + 1_000_003 * e. The sampler keeps
no state of its own: a checkpoint only needs consumed_samples, and a resumed run at any data-parallel
layout draws exactly the sequences the uninterrupted run would have.
"""

from __future__ import annotations

import numpy as np
import torch

from megarank.errors import MegarankError

_EPOCH_SEED_STRIDE = 1_000_003  # a prime, so epoch seeds of nearby base seeds do not collide for small e


class ResumableSampler:
    """Global sample position -> sequence id."""

    def __init__(self, num_sequences: int, seed: int) -> None:
        if num_sequences <= 0:
            raise MegarankError(f"the sampler needs at least one sequence, got {num_sequences}; add data")
        self.num_sequences = num_sequences
        self.seed = seed
        self._cached_epoch: int | None = None  # a cache of one permutation, not state: it is recomputable
        self._cached_perm: np.ndarray | None = None

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """The order of all sequence ids in one epoch."""
        if epoch != self._cached_epoch:
            generator = torch.Generator().manual_seed(self.seed + _EPOCH_SEED_STRIDE * epoch)
            self._cached_perm = torch.randperm(self.num_sequences, generator=generator).numpy()
            self._cached_epoch = epoch
        return self._cached_perm

    def indices(self, start: int, count: int) -> np.ndarray:
        """Sequence ids for positions start .. start + count - 1, which may span several epochs."""
        if start < 0 or count < 0:
            raise ValueError(f"indices({start}, {count}): start and count must be non-negative")
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            epoch, offset = divmod(start + done, self.num_sequences)
            take = min(count - done, self.num_sequences - offset)
            out[done : done + take] = self.epoch_permutation(epoch)[offset : offset + take]
            done += take
        return out

    def state_dict(self, consumed_samples: int) -> dict:
        return {
            "consumed_samples": consumed_samples,
            "seed": self.seed,
            "num_sequences": self.num_sequences,
        }

    def check_state(self, state: dict) -> int:
        """Returns the checkpoint's consumed_samples after checking it was drawn from this same data order.
        (Checkpoints written before the sampler lost its test-only `shuffle` switch also record shuffle: true;
        nothing else ever ran, so it is not compared.)"""
        for key in ("seed", "num_sequences"):
            saved, now = state.get(key), getattr(self, key)
            if saved != now:
                raise MegarankError(
                    f"data changed since checkpoint: sampler {key} was {saved}, now {now}; "
                    f"restore the original data and seed or start a fresh run"
                )
        if "consumed_samples" not in state:
            raise MegarankError("sampler state in the checkpoint lacks consumed_samples; the checkpoint is corrupt")
        return int(state["consumed_samples"])
