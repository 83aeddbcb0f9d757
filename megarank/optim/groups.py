"""Weight-decay groups by parameter role: the paper's control knob (separate decay for attention and MLP;
docs/paper.md, "Weight-decay groups").

Each parameter's group is its role's decay_group (megarank/models/roles.py, the one table of roles): a
parameter of no role is an error there, and a group the model must have ('no_decay', 'attn', 'mlp') that
claims nothing is an error here, so a renamed layer fails loudly instead of silently changing its decay
(bigscience Megatron-DeepSpeed #262). Roles, not shards: under tensor parallelism a shard of W_Q is still 'attn'.
"""

from __future__ import annotations

from torch import nn

from megarank.config.schema import OptimConfig
from megarank.errors import MegarankError
from megarank.models.roles import DECAY_GROUPS, role_of

REQUIRED_GROUPS = ("no_decay", "attn", "mlp")
"""Groups every megarank model has (norm gains, attention and MLP weights)."""


def group_decay(group: str, cfg: OptimConfig) -> float:
    """The weight decay of `group`: 0 for 'no_decay', else OptimConfig.wd_<group>."""
    return 0.0 if group == "no_decay" else getattr(cfg, f"wd_{group}")


def build_param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Optimizer param groups [{'name', 'params', 'weight_decay'}] in DECAY_GROUPS order, one per group that
    claims a trainable parameter; within a group, the parameters in model order.

    Raises MegarankError if a trainable parameter has no role or a required group claims nothing."""
    claimed: dict[str, list[nn.Parameter]] = {group: [] for group in DECAY_GROUPS}
    for name, param in model.named_parameters():  # shared (tied) parameters appear once
        if param.requires_grad:
            claimed[role_of(name).decay_group].append(param)
    for required in REQUIRED_GROUPS:
        if not claimed[required]:
            raise MegarankError(f"weight-decay group '{required}' matched no parameter; were layers renamed? "
                                "(roles in megarank/models/roles.py)")
    return [{"name": group, "params": params, "weight_decay": group_decay(group, cfg)}
            for group, params in claimed.items() if params]


def describe_groups(groups: list[dict]) -> str:
    """A table of group, tensors, elements and decay for the start-up log."""
    lines = [f"{'group':<10} {'tensors':>8} {'elements':>14} {'weight_decay':>13}"]
    for g in groups:
        n = sum(p.numel() for p in g["params"])
        lines.append(f"{g['name']:<10} {len(g['params']):>8} {n:>14,} {g['weight_decay']:>13g}")
    return "\n".join(lines)
