"""Decay groups by role: every parameter claimed exactly once with its role's decay (the names of each group
checked here by hand); a parameter of no role, or a required group that claims nothing, is an error; the
schedule matches the paper's formula."""

from __future__ import annotations

import math

import pytest
from torch import nn

from megarank.config import ModelConfig, OptimConfig
from megarank.errors import MegarankError
from megarank.models.gpt import GPT
from megarank.optim.groups import build_param_groups, describe_groups
from megarank.optim.schedule import lr_multiplier


def names_by_group(model, groups):
    ids = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: sorted(ids[id(p)] for p in g["params"]) for g in groups}


@pytest.mark.parametrize("bias, tie, position", [(False, True, "learned"), (True, False, "rotary")])
def test_every_parameter_in_exactly_one_role(bias, tie, position):
    model = GPT(ModelConfig(n_layers=2, d_model=16, n_heads=2, seq_len=8, vocab_size=20, bias=bias,
                            tie_embeddings=tie, position=position))
    cfg = OptimConfig(wd_attn=0.3, wd_mlp=0.2, wd_other=0.1)
    groups = build_param_groups(model, cfg)
    by_group = names_by_group(model, groups)
    claimed = sum(by_group.values(), [])
    assert sorted(claimed) == sorted(n for n, _ in model.named_parameters())
    assert len(claimed) == len(set(claimed))
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert decay == {"no_decay": 0.0, "attn": 0.3, "mlp": 0.2, "other": 0.1}
    assert all(".attn." in n and n.endswith("_proj.weight") for n in by_group["attn"])
    assert len(by_group["attn"]) == 2 * 4 and len(by_group["mlp"]) == 2 * 2
    assert all(n.endswith(".bias") or ".ln_" in n or n.startswith("ln_") for n in by_group["no_decay"])
    assert "mlp" in describe_groups(groups)


def test_unclaimed_parameter_is_an_error():
    model = GPT(ModelConfig(n_layers=1, d_model=16, n_heads=2, seq_len=8, vocab_size=20))
    model.adapter = nn.Linear(4, 4)
    with pytest.raises(MegarankError, match="'adapter.weight' has no role.*megarank/models/roles.py"):
        build_param_groups(model, OptimConfig())


def test_frozen_parameters_are_left_out():
    model = GPT(ModelConfig(n_layers=1, d_model=16, n_heads=2, seq_len=8, vocab_size=20))
    model.wte.weight.requires_grad_(False)
    groups = build_param_groups(model, OptimConfig())
    assert all(p is not model.wte.weight for g in groups for p in g["params"])


def test_group_matching_nothing_is_an_error():
    class NoAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Module()])
            self.blocks[0].mlp = nn.Module()
            self.blocks[0].mlp.fc_in = nn.Linear(2, 2, bias=False)
            self.ln_f = nn.LayerNorm(2)

    with pytest.raises(MegarankError, match="'attn' matched no parameter"):
        build_param_groups(NoAttention(), OptimConfig())


def test_schedule_warmup_then_cosine_to_ten_percent():
    kw = dict(warmup_steps=100, total_steps=1100, start_ratio=1e-6 / 1e-3, min_ratio=0.1)
    assert lr_multiplier(0, **kw) == pytest.approx(1e-3)
    assert lr_multiplier(50, **kw) == pytest.approx(1e-3 + 0.5 * (1 - 1e-3))
    assert lr_multiplier(100, **kw) == pytest.approx(1.0)
    assert lr_multiplier(600, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_multiplier(1100, **kw) == pytest.approx(0.1) == lr_multiplier(5000, **kw)
    values = [lr_multiplier(s, **kw) for s in range(100, 1101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
