"""Test driver: megarank-train in which rank $FAIL_RANK's read of its third training micro batch fails with an
I/O error — a disk going bad under one rank in the middle of a real multi-process run."""

import errno
import os
import sys

from megarank.cli import train_main
from megarank.train import tasks

_real_micro_batch = tasks.micro_batch
_reads = 0


def _failing_micro_batch(*args, **kwargs):
    global _reads
    _reads += 1
    if os.environ["RANK"] == os.environ["FAIL_RANK"] and _reads == 3:
        raise OSError(errno.EIO, "Input/output error", "shard_00000.bin")
    return _real_micro_batch(*args, **kwargs)


tasks.micro_batch = _failing_micro_batch
sys.exit(train_main())
