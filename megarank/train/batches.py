"""Compatibility only: moved to megarank/data/batches.py (which items each rank takes) and
megarank/data/training_data.py (opening the data). Kept for callers outside the training path not yet moved
(tests/parallel/test_tensor_parallel.py, tests/parallel/grad_driver.py); the lead removes it with them."""

from megarank.data.batches import micro_batch, sample_start, validation_shard
from megarank.data.training_data import TextData, open_text_data

__all__ = ["micro_batch", "sample_start", "validation_shard", "TextData", "open_text_data"]
