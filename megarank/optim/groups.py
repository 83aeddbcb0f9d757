"""Weight-decay groups by parameter role: the paper's control knob (separate decay for attention and MLP;
docs/paper.md, "Weight-decay groups").

Each parameter's group is its role's decay_group (megarank/models/roles.py, the one table of roles): a
parameter of no role is an error there, and a group the model must have ('no_decay', 'attn', 'mlp') that
claims nothing is an error here, so a renamed layer fails loudly instead of silently changing its decay
(bigscience Megatron-DeepSpeed #262). Roles, not shards: under tensor parallelism a shard of W_Q is still 'attn'.

The attn group splits into 'qk' (W_Q, W_K) and 'ov' (W_V, W_O), by the roles' product, only when the two
products' decays differ (optim.wd_qk != optim.wd_ov, or the decay schedule covers one of them only): with equal
decays the groups are today's four, so checkpoints written before the split existed resume unchanged. DeepSpeed
(ZeRO 1-3 flatten each group's tensors) cannot load optimizer state saved under another group layout, so a
resume must keep its checkpoint's layout (train/resume_checks.py).
"""

from __future__ import annotations

from torch import nn

from megarank.config.schema import OptimConfig
from megarank.errors import MegarankError
from megarank.models.roles import DECAY_GROUPS, PRODUCTS, Role, role_of
from megarank.optim.decay import base_decay, decay_at, schedule_covers

REQUIRED_GROUPS = ("no_decay", "attn", "mlp")
"""Groups every megarank model has (norm gains, attention and MLP weights)."""


def splits_attention(cfg: OptimConfig) -> bool:
    """Whether W_Q, W_K and W_V, W_O go to separate groups: their decays differ, now or by the schedule."""
    qk, ov = PRODUCTS
    return base_decay(qk, cfg) != base_decay(ov, cfg) or schedule_covers(qk, cfg) != schedule_covers(ov, cfg)


def group_layout(cfg: OptimConfig) -> tuple[str, ...]:
    """The optimizer's group names in order for this config: DECAY_GROUPS, with 'attn' replaced by 'qk', 'ov'
    when split (a model whose group claims nothing lacks it in build_param_groups)."""
    split = splits_attention(cfg)
    return tuple(name for group in DECAY_GROUPS for name in (PRODUCTS if split and group == "attn" else (group,)))


def group_of(role: Role, split: bool) -> str:
    """The optimizer group a parameter of `role` goes to."""
    return role.product if split and role.product is not None else role.decay_group


def build_param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Optimizer param groups [{'name', 'params', 'weight_decay'}] in group_layout order, one per group that
    claims a trainable parameter; within a group, the parameters in model order. weight_decay is the decay of
    optimizer step 0 (optim/decay.py; the train loop sets each step's).

    Raises MegarankError if a trainable parameter has no role or a required group claims nothing."""
    split = splits_attention(cfg)
    claimed: dict[str, list[nn.Parameter]] = {group: [] for group in group_layout(cfg)}
    for name, param in model.named_parameters():  # shared (tied) parameters appear once
        if param.requires_grad:
            claimed[group_of(role_of(name), split)].append(param)
    for required in REQUIRED_GROUPS:
        present = [g for g in (PRODUCTS if split and required == "attn" else (required,)) if claimed[g]]
        if not present:
            raise MegarankError(f"weight-decay group '{required}' matched no parameter; were layers renamed? "
                                "(roles in megarank/models/roles.py)")
    # total_steps only matters past a linear/cosine schedule's start, never at step 0
    return [{"name": group, "params": params, "weight_decay": decay_at(group, 0, cfg, total_steps=1)}
            for group, params in claimed.items() if params]


def describe_groups(groups: list[dict], cfg: OptimConfig | None = None) -> str:
    """A table of group, tensors, elements, decay (at step 0) and, given the config, its decay schedule, for the
    start-up log."""
    lines = [f"{'group':<10} {'tensors':>8} {'elements':>14} {'weight_decay':>13}" + ("  schedule" if cfg else "")]
    for g in groups:
        n = sum(p.numel() for p in g["params"])
        line = f"{g['name']:<10} {len(g['params']):>8} {n:>14,} {g['weight_decay']:>13g}"
        lines.append(line + (f"  {describe_schedule(g['name'], cfg)}" if cfg else ""))
    return "\n".join(lines)


def describe_schedule(group: str, cfg: OptimConfig) -> str:
    """The group's decay over training in words: 'constant', 'x0 from step 4', 'linear to x0.1 over 100-1000'."""
    if group == "no_decay" or cfg.wd_schedule == "constant" or not schedule_covers(group, cfg):
        return "constant"
    if cfg.wd_schedule == "step":
        return f"x{cfg.wd_final_ratio:g} from step {cfg.wd_schedule_start}"
    end = cfg.wd_schedule_end if cfg.wd_schedule_end is not None else "max_steps"
    return f"{cfg.wd_schedule} to x{cfg.wd_final_ratio:g} over steps {cfg.wd_schedule_start}-{end}"
