"""The decay's timescales per group (Wang & Aitchison 2025; docs/experiments.md, "Weight decay over training"):
what a run's weight decay amounts to, comparable across learning rates, schedules and run lengths.

    total     Σ_t lr(t) · λ(t) over the run's optimizer steps t = 0 .. max_steps-1: AdamW shrinks a weight
              by Π_t (1 - lr(t) λ(t)) ≈ exp(-total) in the absence of gradients, so total is the decay's
              strength over the whole run (units: none)
    tau       1 / (lr_peak · λ): the AdamW timescale in optimizer steps, the number of steps over which decay at
              the peak LR and the group's configured λ shrinks a weight by e; infinite without decay
    tau_epochs tau / steps per epoch (the training data's samples / train.global_batch), when the data size is
              known (the run's metrics.jsonl records it at step 0: 'steps_per_epoch'; None otherwise)

Under optim.decoupled=false (Adam + L2) the decay passes through Adam's normalisation, so these are nominal.
lr(t) is optim/schedule.py's warm-up + cosine and λ(t) optim/decay.py's schedule, both read from the config
alone: the one place these are computed, for the sweep's gather and the experiment reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megarank.config.schema import OptimConfig
from megarank.optim.decay import base_decay, decay_at
from megarank.optim.groups import group_layout
from megarank.optim.schedule import lr_multiplier


@dataclass(frozen=True)
class Timescale:
    """One decay group's timescales (see the module docstring)."""

    group: str
    total: float
    """Σ_t lr(t) · λ(t)."""
    tau: float
    """1 / (lr_peak · λ) in optimizer steps; math.inf without decay."""
    tau_epochs: float | None
    """tau in epochs of the training data; None when the data size is not known."""


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based), as the LR scheduler sets it."""
    return cfg.lr * lr_multiplier(step, warmup_steps=cfg.warmup_steps, total_steps=total_steps,
                                  start_ratio=cfg.warmup_start_lr / cfg.lr, min_ratio=cfg.min_lr_ratio)


def decay_timescales(cfg: OptimConfig, max_steps: int, steps_per_epoch: float | None = None) -> dict[str, Timescale]:
    """{group: Timescale} for every decayed group of the config's layout ('attn' or 'qk', 'ov'; 'mlp', 'other')
    over a run of max_steps optimizer steps."""
    lrs = [lr_at(step, cfg, max_steps) for step in range(max_steps)]
    out = {}
    for group in group_layout(cfg):
        if group == "no_decay":
            continue
        total = math.fsum(lr * decay_at(group, step, cfg, max_steps) for step, lr in enumerate(lrs))
        rate = cfg.lr * base_decay(group, cfg)
        tau = 1.0 / rate if rate > 0 else math.inf
        out[group] = Timescale(group, total, tau, tau / steps_per_epoch if steps_per_epoch else None)
    return out


def timescale_columns(timescales: dict[str, Timescale]) -> dict[str, float | None]:
    """Flat table columns: {'sum_lr_wd/<group>', 'tau_steps/<group>', 'tau_epochs/<group>'} (an infinite tau as
    None, so that CSV and JSON stay plain numbers)."""
    columns: dict[str, float | None] = {}
    for group, t in timescales.items():
        columns[f"sum_lr_wd/{group}"] = t.total
        columns[f"tau_steps/{group}"] = t.tau if math.isfinite(t.tau) else None
        columns[f"tau_epochs/{group}"] = t.tau_epochs if t.tau_epochs is not None and math.isfinite(t.tau_epochs) \
            else None
    return columns
