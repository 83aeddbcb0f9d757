"""Two watches on the training loss, checked every step.

Divergence: a non-finite loss or gradient norm stops the run before that step is saved, so `latest` keeps
naming the checkpoint saved before it. DeepSpeed's ZeRO and bf16 optimizers skip a step whose gradient norm
is inf/nan and carry on (there is no loss scale in fp32 or bf16 to lower, so the next step usually overflows
again): left alone, such a run burns its whole allocation and checkpoints weights that no longer train. Each
rank's finding travels in the step's one all-reduce (train/step_sync.py), so every rank stops at the same step.

Loss spike: a finite loss above spike_factor times the mean of the last spike_window losses is worth a
warning, not a stop: the run may recover, and if it does not, the divergence check stops it; the warnings
tell which checkpoint predates the trouble.
"""

from __future__ import annotations

import math
from collections import deque

from megarank.errors import CollectiveError


class TrainingDiverged(CollectiveError):
    """A step's loss or gradient norm was not finite; raised on every rank at the same step."""


def divergence_error(step: int, loss: float, grad_norm: float, last_saved_tag: str | None) -> TrainingDiverged:
    """The one line a diverged run stops with: the step, the values, and what to do next."""
    what = f"loss is {loss:.4g} (grad_norm {grad_norm:.4g})" if not math.isfinite(loss) else \
        f"grad_norm is {grad_norm:.4g} (loss {loss:.4g})"
    fix = "optim.lr (or set optim.grad_clip > 0, or lengthen optim.warmup_steps)"
    if last_saved_tag is None:
        return TrainingDiverged(f"step {step}: {what}; the run stopped before saving it, and no checkpoint was "
                                f"written before it — lower {fix} and start again")
    # the saved weights are the ones this step's loss was computed with: if it had been climbing for a while,
    # an earlier tag is the one to go back to
    return TrainingDiverged(f"step {step}: {what}; the run stopped before saving it — latest still names "
                            f"{last_saved_tag}. Lower {fix}, then resume with train.resume=auto (or with "
                            "train.resume=<checkpoint.dir>/global_step<N> further back if the loss was already "
                            "climbing)")


class LossSpikeDetector:
    """Flags a loss above factor × the mean of the previous `window` losses (factor 0: never).

    The window starts empty at every (re)start and nothing is flagged until it is full, so the steep fall of
    the first steps and a resumed run's first steps are not compared against too short a history. A spike
    joins the window: a loss that jumps and stays up becomes the new normal after `window` steps."""

    def __init__(self, factor: float, window: int) -> None:
        self.factor = factor
        self._recent: deque[float] = deque(maxlen=window)

    def check(self, loss: float) -> float | None:
        """The running mean `loss` spiked above, or None; call once per step with that step's loss."""
        spiked_over = None
        if self.factor and len(self._recent) == self._recent.maxlen:
            mean = sum(self._recent) / len(self._recent)
            if loss > self.factor * mean:
                spiked_over = mean
        if math.isfinite(loss):
            self._recent.append(loss)
        return spiked_over
