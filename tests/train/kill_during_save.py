"""Test driver: megarank-train whose process SIGKILLs itself while DeepSpeed writes the optimizer shard of the
checkpoint tag named in $KILL_DURING_SAVE_TAG — a real kill in the middle of a real save."""

import os
import signal
import sys

import torch

from megarank.cli import train_main

_real_save = torch.save
_tag = os.environ["KILL_DURING_SAVE_TAG"]


def _save_then_die(obj, f, *args, **kwargs):
    _real_save(obj, f, *args, **kwargs)
    if _tag in str(f) and "optim_states" in str(f):
        os.kill(os.getpid(), signal.SIGKILL)


torch.save = _save_then_die
sys.exit(train_main())
