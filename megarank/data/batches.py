"""Which items each rank trains and validates on: a step's global batch is the next global_batch sampler
positions after the samples consumed so far, [batch_start, batch_start + global_batch), dealt out to
(micro step, data-parallel rank) slots.

Because the global batch is the same set of sequences whatever the layout, the global-batch mean loss (what
we log) is the same at every data-parallel size; and since the sampler is a pure function of its position,
resuming at the saved consumed_samples replays exactly what a straight run would have seen, whatever global
batch the resumed run uses. Validation shares a fixed set of items out over the data-parallel ranks in the same
layout-free way (validation_shard).
"""

from __future__ import annotations

import torch

from megarank.data.training_data import TextData


def sample_start(*, batch_start: int, micro_step: int, dp_rank: int, dp_size: int, micro_batch: int) -> int:
    """First sampler position of this rank's micro batch (micro_step) within the global batch that starts at
    sampler position batch_start (the samples consumed before it)."""
    return batch_start + (micro_step * dp_size + dp_rank) * micro_batch


def micro_batch(data: TextData, *, batch_start: int, micro_step: int, dp_rank: int, dp_size: int, micro_batch: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (micro_batch, seq_len) for this rank's slot in the global batch at batch_start."""
    start = sample_start(batch_start=batch_start, micro_step=micro_step, dp_rank=dp_rank, dp_size=dp_size,
                         micro_batch=micro_batch)
    x, y = data.train.batch(data.sampler.indices(start, micro_batch))
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def validation_shard(n_items: int, *, dp_rank: int, dp_size: int, micro_batch: int) -> list[list[int]]:
    """This data-parallel rank's validation micro batches over items 0..n_items-1: rank r takes items r, r + dp,
    r + 2·dp, ..., micro_batch at a time, so the ranks together cover each item once whatever dp is.

    Every rank gets the same number of batches, the most any rank needs, so that their forwards stay in lock
    step (ZeRO-3 gathers the parameters across the data-parallel group in each); a rank with fewer items ends
    with empty batches, for which it runs a stand-in forward and counts nothing."""
    mine = list(range(dp_rank, n_items, dp_size))
    most = -(-n_items // dp_size)  # the fullest rank's item count (ceil division)
    n_batches = -(-most // micro_batch)
    return [mine[k * micro_batch:(k + 1) * micro_batch] for k in range(n_batches)]
