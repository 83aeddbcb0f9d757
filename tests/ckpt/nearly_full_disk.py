"""Test driver: megarank-train on a disk that reports only $FREE_BYTES free (shutil.disk_usage, which megarank
reads before each save), as a nearly full checkpoint.dir would — without root, a small file system or filling
a real disk."""

import os
import shutil
import sys

from megarank.cli import train_main

_real_disk_usage = shutil.disk_usage


def _nearly_full(path):
    usage = _real_disk_usage(path)
    return usage._replace(free=min(usage.free, int(os.environ["FREE_BYTES"])))


shutil.disk_usage = _nearly_full
sys.exit(train_main())
