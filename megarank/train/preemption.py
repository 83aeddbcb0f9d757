"""Graceful preemption: SIGTERM (what SLURM and Kubernetes send) asks the run to finish its step, save a
checkpoint and exit 0. The flag is agreed across ranks so all of them stop at the same step."""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist


class PreemptionHandler:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.requested = False
        for sig in signals:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def should_stop(self, device: torch.device) -> bool:
        """Collective: true on every rank if any rank got the signal."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
