"""Weight-decay groups by parameter role: the paper's control knob (separate decay for attention and MLP).

Ordered rules on parameter names, first match wins; every trainable parameter must be claimed by exactly one
rule and every rule must claim something, so a renamed layer fails loudly instead of silently changing its
decay (bigscience Megatron-DeepSpeed #262). Roles, not shards: under tensor parallelism a shard of q_proj is
still 'attn'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from megarank.config.schema import OptimConfig


@dataclass(frozen=True)
class GroupRule:
    name: str
    pattern: str
    """Regular expression searched in the parameter's name."""
    decay_field: str | None
    """OptimConfig field holding this group's decay; None means no decay."""


RULES: tuple[GroupRule, ...] = (
    GroupRule("no_decay", r"(\.bias$|(^|\.)ln_\w*\.weight$|(^|\.)norm\w*\.weight$)", None),  # biases, norm gains
    GroupRule("attn", r"(^|\.)attn\.(q_proj|k_proj|v_proj|o_proj)\.weight$", "wd_attn"),
    GroupRule("mlp", r"(^|\.)mlp\.(fc_in|fc_out)\.weight$", "wd_mlp"),
    # embeddings and output heads: GPT (wte, wpe, lm_head) and ViT (patch_embed, cls_token, pos_embed, head)
    GroupRule("other", r"^((wte|wpe|lm_head|head|patch_embed\.proj)\.weight|cls_token|pos_embed)$", "wd_other"),
)


def build_param_groups(model: nn.Module, cfg: OptimConfig, rules: tuple[GroupRule, ...] = RULES) -> list[dict]:
    """Optimizer param groups [{'name', 'params', 'weight_decay'}] in rule order, one per rule that matched.

    Raises ValueError if a trainable parameter matches no rule or a required rule matches nothing."""
    claimed: dict[str, list[nn.Parameter]] = {r.name: [] for r in rules}
    unclaimed = []
    for name, param in model.named_parameters():  # shared (tied) parameters appear once
        if not param.requires_grad:
            continue
        rule = next((r for r in rules if re.search(r.pattern, name)), None)
        if rule is None:
            unclaimed.append(name)
        else:
            claimed[rule.name].append(param)
    if unclaimed:
        raise ValueError(f"parameters claimed by no weight-decay rule: {unclaimed}; add a rule in optim/groups.py")
    for required in ("no_decay", "attn", "mlp"):
        if any(r.name == required for r in rules) and not claimed[required]:
            raise ValueError(f"weight-decay rule '{required}' matched no parameter; were layers renamed?")
    return [{"name": r.name, "params": claimed[r.name],
             "weight_decay": getattr(cfg, r.decay_field) if r.decay_field else 0.0}
            for r in rules if claimed[r.name]]


def describe_groups(groups: list[dict]) -> str:
    """A table of group, tensors, elements and decay for the start-up log."""
    lines = [f"{'group':<10} {'tensors':>8} {'elements':>14} {'weight_decay':>13}"]
    for g in groups:
        n = sum(p.numel() for p in g["params"])
        lines.append(f"{g['name']:<10} {len(g['params']):>8} {n:>14,} {g['weight_decay']:>13g}")
    return "\n".join(lines)
