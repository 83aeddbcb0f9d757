"""The decay schedule and the per-product groups (megarank/optim/decay.py, groups.py) against their definitions
written out here: each schedule's multiplier at chosen steps, which groups a schedule covers, when the attn group
splits into qk and ov, and the start-up table's schedule column."""

from __future__ import annotations

import math

import pytest

from megarank.config import ModelConfig, OptimConfig
from megarank.errors import MegarankError
from megarank.models.gpt import GPT
from megarank.models.roles import ROLE_TABLE
from megarank.optim.decay import apply_decay, base_decay, decay_at, schedule_covers, schedule_multiplier
from megarank.optim.groups import build_param_groups, describe_groups, group_layout, splits_attention


def test_constant_is_one_at_every_step():
    assert {schedule_multiplier(s, OptimConfig(), 100) for s in range(0, 200, 7)} == {1.0}


def test_step_switches_to_the_factor_from_step_n():
    cfg = OptimConfig(wd_schedule="step", wd_schedule_start=4, wd_final_ratio=0.25)
    assert [schedule_multiplier(s, cfg, 8) for s in range(8)] == [1.0] * 4 + [0.25] * 4


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_linear_and_cosine_go_from_one_to_the_final_ratio(kind):
    cfg = OptimConfig(wd_schedule=kind, wd_schedule_start=10, wd_schedule_end=30, wd_final_ratio=0.2)
    at = [schedule_multiplier(s, cfg, 100) for s in range(0, 41)]
    assert at[:11] == [1.0] * 11 and at[30:] == [pytest.approx(0.2)] * 11
    middle = 0.6 if kind == "linear" else 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 2))
    assert at[20] == pytest.approx(middle)
    assert all(a >= b for a, b in zip(at, at[1:]))
    # no end: train.max_steps
    open_ended = OptimConfig(wd_schedule=kind, wd_schedule_start=10, wd_final_ratio=0.2)
    assert schedule_multiplier(100, open_ended, 100) == pytest.approx(0.2)
    assert schedule_multiplier(55, open_ended, 100) == pytest.approx(middle)


def test_schedule_covers_only_its_groups():
    cfg = OptimConfig(wd_attn=0.5, wd_mlp=0.2, wd_schedule="step", wd_schedule_start=3, wd_schedule_groups=["attn"])
    assert [schedule_covers(g, cfg) for g in ("no_decay", "attn", "qk", "ov", "mlp", "other")] == \
        [False, True, True, True, False, False]
    assert decay_at("attn", 2, cfg, 10) == 0.5 and decay_at("attn", 3, cfg, 10) == 0.0
    assert decay_at("mlp", 3, cfg, 10) == 0.2 and decay_at("no_decay", 0, cfg, 10) == 0.0
    groups = [{"name": "attn", "weight_decay": 9.0}, {"name": "mlp", "weight_decay": 9.0}]
    assert apply_decay(groups, cfg, 5, 10) == {"attn": 0.0, "mlp": 0.2}
    assert [g["weight_decay"] for g in groups] == [0.0, 0.2]


def test_products_fall_back_to_wd_attn():
    cfg = OptimConfig(wd_attn=0.4, wd_ov=0.0)
    assert (base_decay("qk", cfg), base_decay("ov", cfg), base_decay("attn", cfg)) == (0.4, 0.0, 0.4)


def test_products_set_alike_decay_the_unsplit_group_at_their_value():
    """wd_qk = wd_ov keeps one attn group; it decays at their value, not at wd_attn (which they override)."""
    cfg = OptimConfig(wd_attn=0.1, wd_qk=0.0, wd_ov=0.0)
    assert not splits_attention(cfg) and base_decay("attn", cfg) == 0.0
    groups = [{"name": "attn", "weight_decay": 9.0}]
    assert apply_decay(groups, cfg, 0, 10) == {"attn": 0.0}
    assert base_decay("attn", OptimConfig(wd_attn=0.1, wd_qk=0.3, wd_ov=0.3)) == 0.3


@pytest.mark.parametrize("changes, split", [
    ({}, False),
    ({"wd_qk": 0.1, "wd_ov": 0.1}, False),  # equal to wd_attn's default: one group, as today
    ({"wd_qk": 0.2}, True),
    ({"wd_ov": 0.0, "wd_attn": 0.0}, False),
    ({"wd_schedule": "step", "wd_schedule_groups": ["qk"]}, True),  # the schedule on one product only
    ({"wd_schedule": "step", "wd_schedule_groups": ["qk", "ov"]}, False),
    ({"wd_schedule_groups": ["qk"]}, False),  # a constant schedule scales nothing
])
def test_attn_splits_only_when_the_products_decay_differently(changes, split):
    cfg = OptimConfig(**changes)
    assert splits_attention(cfg) is split
    assert group_layout(cfg) == (("no_decay", "qk", "ov", "mlp", "other") if split
                                 else ("no_decay", "attn", "mlp", "other"))


def test_split_groups_hold_their_products_and_the_table_shows_them():
    model = GPT(ModelConfig(n_layers=2, d_model=16, n_heads=2, seq_len=8, vocab_size=20))
    cfg = OptimConfig(wd_qk=0.3, wd_schedule="step", wd_schedule_start=5, wd_schedule_groups=["ov"])
    groups = build_param_groups(model, cfg)
    ids = {id(p): n for n, p in model.named_parameters()}
    names = {g["name"]: sorted(ids[id(p)] for p in g["params"]) for g in groups}
    assert [g["name"] for g in groups] == ["no_decay", "qk", "ov", "mlp", "other"]
    assert all(n.endswith(("q_proj.weight", "k_proj.weight")) for n in names["qk"]) and len(names["qk"]) == 4
    assert all(n.endswith(("v_proj.weight", "o_proj.weight")) for n in names["ov"]) and len(names["ov"]) == 4
    assert {g["name"]: g["weight_decay"] for g in groups}["qk"] == 0.3
    table = describe_groups(groups, cfg).splitlines()
    assert "schedule" in table[0]
    assert table[2].startswith("qk") and table[2].endswith("constant")
    assert table[3].startswith("ov") and table[3].endswith("x0 from step 5")


def test_every_attention_row_names_its_product():
    for row in ROLE_TABLE:
        assert (row.role.decay_group == "attn") == (row.role.product in ("qk", "ov")), row.pattern
        if row.role.product:
            assert row.role.product == {"q": "qk", "k": "qk", "v": "ov", "o": "ov"}[row.role.name]


@pytest.mark.parametrize("changes, message", [
    ({"wd_qk": -1.0}, "optim.wd_qk must be >= 0"),
    ({"wd_schedule": "exponential"}, "optim.wd_schedule must be one of constant|step|linear|cosine"),
    ({"wd_schedule_start": 10, "wd_schedule_end": 5}, "optim.wd_schedule_end .* must come after"),
    ({"wd_final_ratio": -0.5}, "optim.wd_final_ratio must be >= 0"),
    ({"wd_schedule_groups": ["attention"]}, r"optim.wd_schedule_groups: \['attention'\] not among"),
])
def test_bad_schedule_settings_are_one_line_errors(changes, message):
    with pytest.raises(MegarankError, match=message):
        OptimConfig(**changes)
