"""Weight decay over training: each optimizer group's decay at every step (docs/experiments.md, "Weight decay
over training").

    λ_g(t) = base_g · m_g(t)

base_g is the group's configured decay (optim.wd_attn, wd_mlp, wd_other; the split groups qk and ov take
optim.wd_qk and optim.wd_ov, each falling back to wd_attn, and an unsplit attn group their common value, so
wd_qk = wd_ov = 0 decays no attention weight whatever wd_attn says; no_decay 0), m_g(t) the schedule's multiplier
(optim.wd_schedule) for the groups optim.wd_schedule_groups covers and 1 for the others, t the 0-based
optimizer step about to be taken (the LR schedule's convention, optim/schedule.py).

apply_decay sets it before every optimizer step on the param groups of the optimizer DeepSpeed steps — the
one its LR scheduler holds (engine.lr_scheduler.optimizer): the same groups under ZeRO 0-3 and TP, ZeRO keeping
each group's hyper-parameters beside its flat partitions. A checkpoint's saved decay (restored with the
optimizer state) is therefore overwritten by this run's from the step it resumes at, as a lowered optim.lr is.
"""

from __future__ import annotations

import math

from megarank.config.schema import OptimConfig
from megarank.models.roles import PRODUCTS


def base_decay(group: str, cfg: OptimConfig) -> float:
    """The configured decay of `group` ('no_decay', 'attn', 'qk', 'ov', 'mlp', 'other'), before the schedule."""
    if group == "no_decay":
        return 0.0
    if group == "attn":  # unsplit: both products decay alike, at wd_qk = wd_ov when those are set
        return base_decay(PRODUCTS[0], cfg)
    if group in PRODUCTS:
        own = getattr(cfg, f"wd_{group}")
        return cfg.wd_attn if own is None else own
    return getattr(cfg, f"wd_{group}")


def schedule_covers(group: str, cfg: OptimConfig) -> bool:
    """Whether optim.wd_schedule scales `group`: named in wd_schedule_groups, a product of a named 'attn', or
    'attn' itself with both products named. A constant schedule covers nothing (it scales by 1)."""
    named = set(cfg.wd_schedule_groups)
    if group == "no_decay" or cfg.wd_schedule == "constant":
        return False
    if group in named:
        return True
    if group in PRODUCTS:
        return "attn" in named
    return group == "attn" and set(PRODUCTS) <= named


def schedule_multiplier(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """m(step): the schedule's multiplier for the optimizer step about to be taken (0-based)."""
    kind, start, final = cfg.wd_schedule, cfg.wd_schedule_start, cfg.wd_final_ratio
    if kind == "constant" or step < start:
        return 1.0
    if kind == "step":
        return final
    end = cfg.wd_schedule_end if cfg.wd_schedule_end is not None else total_steps
    progress = min(1.0, (step - start) / max(1, end - start))
    if kind == "linear":
        return 1.0 + (final - 1.0) * progress
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def decay_at(group: str, step: int, cfg: OptimConfig, total_steps: int) -> float:
    """λ_group(step): the decay the optimizer step `step` (0-based) applies to `group`."""
    base = base_decay(group, cfg)
    return base * schedule_multiplier(step, cfg, total_steps) if schedule_covers(group, cfg) else base


def apply_decay(param_groups: list[dict], cfg: OptimConfig, step: int, total_steps: int) -> dict[str, float]:
    """Set every group's weight_decay to its decay at `step`; returns {group name: decay}."""
    applied = {}
    for group in param_groups:
        group["weight_decay"] = applied[group["name"]] = decay_at(group["name"], step, cfg, total_steps)
    return applied


def decay_in_effect(param_groups: list[dict]) -> dict[str, float]:
    """{group name: weight_decay} as the optimizer's groups hold it now."""
    return {group["name"]: float(group["weight_decay"]) for group in param_groups}
