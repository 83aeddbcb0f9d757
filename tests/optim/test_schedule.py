"""follow_configured_peak after a checkpoint load: with the saved optim.lr the rates come back bit for bit as the
uninterrupted schedule's; with a lowered optim.lr they are the new peak times the same multiplier (without it,
LambdaLR's saved base_lrs would keep the old peak)."""

from __future__ import annotations

import torch
from torch import nn

from megarank.config import OptimConfig
from megarank.optim.schedule import follow_configured_peak, lr_multiplier, warmup_cosine

TOTAL = 10


def stepped(cfg: OptimConfig, steps: int):
    """An AdamW with its schedule after `steps` optimizer steps; returns (optimizer, scheduler)."""
    params = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))]
    optimizer = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}], lr=cfg.lr)
    scheduler = warmup_cosine(optimizer, cfg, TOTAL)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


def resumed(saved_cfg: OptimConfig, cfg: OptimConfig, steps: int) -> list[float]:
    optimizer, scheduler = stepped(saved_cfg, steps)
    new_optimizer, new_scheduler = stepped(cfg, 0)
    new_optimizer.load_state_dict(optimizer.state_dict())
    new_scheduler.load_state_dict(scheduler.state_dict())
    follow_configured_peak(new_scheduler, cfg)
    return [g["lr"] for g in new_optimizer.param_groups]


def test_unchanged_config_resumes_the_same_rates_bit_for_bit():
    cfg = OptimConfig(lr=3e-3, warmup_steps=4)
    straight = [g["lr"] for g in stepped(cfg, 6)[0].param_groups]
    assert resumed(cfg, cfg, 6) == straight


def test_lowered_lr_takes_effect_on_resume():
    saved, lowered = OptimConfig(lr=3e-3, warmup_steps=4), OptimConfig(lr=1e-4, warmup_steps=4)
    multiplier = lr_multiplier(6, warmup_steps=4, total_steps=TOTAL, start_ratio=lowered.warmup_start_lr / 1e-4,
                               min_ratio=lowered.min_lr_ratio)
    assert resumed(saved, lowered, 6) == [1e-4 * multiplier] * 2
