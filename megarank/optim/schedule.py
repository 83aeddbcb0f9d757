"""Learning-rate schedule of the paper (docs/paper.md, "lm-sweep": the paper's Table 2): linear warm-up from
warmup_start_lr to the peak, then cosine to min_lr_ratio * peak at max_steps.

Written as a LambdaLR rather than DeepSpeed's WarmupCosineLR because the latter sets lr = 0 for the very first
optimizer step (it starts from last_batch_iteration = -1); LambdaLR applies step 0's value at construction.
DeepSpeed still owns it: the engine steps it and saves its state in the checkpoint.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from megarank.config.schema import OptimConfig


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, start_ratio: float, min_ratio: float) -> float:
    """lr(step) / peak lr, for the optimizer step about to be taken (0-based)."""
    if step < warmup_steps:
        return start_ratio + (1.0 - start_ratio) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    fn = partial(lr_multiplier, warmup_steps=cfg.warmup_steps, total_steps=total_steps,
                 start_ratio=cfg.warmup_start_lr / cfg.lr, min_ratio=cfg.min_lr_ratio)
    return LambdaLR(optimizer, fn)


def follow_configured_peak(scheduler: LambdaLR, cfg: OptimConfig) -> None:
    """After a checkpoint load, make the schedule use this run's optim.lr.

    LambdaLR.load_state_dict restores base_lrs, and the optimizer's state restores each group's lr, so without
    this a resume with a lowered optim.lr (the fix for a diverged run) would silently train at the saved peak.
    The multiplier (warm-up, cosine to max_steps) is already this run's; with the saved optim.lr the rates
    come out bit for bit as saved."""
    scheduler.base_lrs = [cfg.lr] * len(scheduler.base_lrs)
    rates = [base * multiplier(scheduler.last_epoch) for multiplier, base in zip(scheduler.lr_lambdas,
                                                                                 scheduler.base_lrs)]
    for group, lr in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = lr
    scheduler._last_lr = rates  # what get_last_lr() reports until the next step
