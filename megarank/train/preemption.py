"""Graceful preemption: SIGTERM (what SLURM and Kubernetes send) asks the run to finish its step, save a
checkpoint and exit 0. The request travels in the step's one all-reduce (train/step_sync.py), so all ranks
stop at the same step even when only one got the signal."""

from __future__ import annotations

import signal


class PreemptionHandler:
    """Records that a stop was asked for; the loop reads `requested` once per step."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.requested = False
        for sig in signals:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True
