"""The roles table (megarank/models/roles.py) against the models and against hand-written expectations: every
parameter of the GPT (learned and rotary positions, tied and untied head, bias on and off) and of the ViT (conv
and linear patch embedding, class-token and mean pooling) has a role; decay groups, TP styles and inits are the
ones listed here by name; init_by_role draws exactly what the name-based init it replaced drew; the attention
projections are found per layer, under a wrapper too; the LLaMA options' rows (gate/up/down, q/k norms) give
the decay groups, TP plan and init written out by hand; an unknown name is a one-line error naming roles.py; and
adding a projection to the block is one row: the decay groups, the TP plan and the init pick it up."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from megarank.config import ModelConfig, OptimConfig
from megarank.errors import MegarankError
from megarank.models import roles
from megarank.models.gpt import GPT
from megarank.models.roles import (ATTENTION_ROLES, DECAY_GROUPS, attention_layers, model_roles, role_of,
                                   tensor_records)
from megarank.models.vit import ViT

GPT_VARIANTS = [dict(position=p, tie_embeddings=t, bias=b)
                for p in ("learned", "rotary") for t in (True, False) for b in (True, False)]
VIT_VARIANTS = [dict(patch_embed=e, pooling=p, bias=b) for e in ("conv", "linear") for p in ("cls", "mean")
                for b in (True, False)]
# the LLaMA options of the one block (RMSNorm, SwiGLU, grouped-query attention, per-head q/k norms)
LLAMA_VARIANTS = [dict(position="rotary", norm="rmsnorm", mlp="swiglu", n_kv_heads=1, qk_norm=q, bias=b)
                  for q in (True, False) for b in (True, False)]


def gpt(**kw) -> GPT:
    return GPT(ModelConfig(**{"n_layers": 2, "d_model": 16, "n_heads": 2, "seq_len": 8, "vocab_size": 20, **kw}))


def vit(**kw) -> ViT:
    return ViT(ModelConfig(**{"family": "vit", "n_layers": 2, "d_model": 16, "n_heads": 2, "image_size": 8,
                              "patch_size": 4, "in_channels": 1, "n_classes": 5, **kw}))


def all_names(model: nn.Module) -> list[str]:
    """Every parameter name, a tied head's second name included."""
    return [name for name, _ in model.named_parameters(remove_duplicate=False)]


# the expected role of each name, written out by hand (not read off the table)
BLOCK = {
    "attn.q_proj.weight": ("q", "attn", "column", "normal"),
    "attn.k_proj.weight": ("k", "attn", "column", "normal"),
    "attn.v_proj.weight": ("v", "attn", "column", "normal"),
    "attn.o_proj.weight": ("o", "attn", "row", "residual"),
    "attn.q_proj.bias": ("bias", "no_decay", "column", "zeros"),
    "attn.k_proj.bias": ("bias", "no_decay", "column", "zeros"),
    "attn.v_proj.bias": ("bias", "no_decay", "column", "zeros"),
    "attn.o_proj.bias": ("bias", "no_decay", "replicated", "zeros"),
    "mlp.fc_in.weight": ("mlp_in", "mlp", "column", "normal"),
    "mlp.fc_out.weight": ("mlp_out", "mlp", "row", "residual"),
    "mlp.fc_in.bias": ("bias", "no_decay", "column", "zeros"),
    "mlp.fc_out.bias": ("bias", "no_decay", "replicated", "zeros"),
    "attn.q_norm.weight": ("norm", "no_decay", "replicated", "ones"),
    "attn.k_norm.weight": ("norm", "no_decay", "replicated", "ones"),
    "mlp.gate_proj.weight": ("mlp_in", "mlp", "column", "normal"),
    "mlp.up_proj.weight": ("mlp_in", "mlp", "column", "normal"),
    "mlp.down_proj.weight": ("mlp_out", "mlp", "row", "residual"),
    "mlp.gate_proj.bias": ("bias", "no_decay", "column", "zeros"),
    "mlp.up_proj.bias": ("bias", "no_decay", "column", "zeros"),
    "mlp.down_proj.bias": ("bias", "no_decay", "replicated", "zeros"),
    "ln_1.weight": ("norm", "no_decay", "replicated", "ones"),
    "ln_1.bias": ("bias", "no_decay", "replicated", "zeros"),
    "ln_2.weight": ("norm", "no_decay", "replicated", "ones"),
    "ln_2.bias": ("bias", "no_decay", "replicated", "zeros"),
}
OUTSIDE_BLOCKS = {
    "ln_f.weight": ("norm", "no_decay", "replicated", "ones"),
    "ln_f.bias": ("bias", "no_decay", "replicated", "zeros"),
    "wte.weight": ("embedding", "other", "vocab", "normal"),
    "wpe.weight": ("position", "other", "replicated", "normal"),
    "lm_head.weight": ("head", "other", "vocab", "normal"),
    "patch_embed.proj.weight": ("patch_embed", "other", "replicated", "normal"),
    "patch_embed.proj.bias": ("bias", "no_decay", "replicated", "zeros"),
    "cls_token": ("cls_token", "other", "replicated", "normal"),
    "pos_embed": ("position", "other", "replicated", "normal"),
    "head.weight": ("head", "other", "replicated", "zeros"),
    "head.bias": ("bias", "no_decay", "replicated", "zeros"),
}


def expected_role(name: str) -> tuple[str, str, str, str]:
    match = re.fullmatch(r"blocks\.\d+\.(.*)", name)
    return BLOCK[match[1]] if match else OUTSIDE_BLOCKS[name]


@pytest.mark.parametrize("model", [pytest.param(lambda kw=kw: gpt(**kw), id=f"gpt-{kw}")
                                   for kw in GPT_VARIANTS + LLAMA_VARIANTS]
                         + [pytest.param(lambda kw=kw: vit(**kw), id=f"vit-{kw}") for kw in VIT_VARIANTS]
                         + [pytest.param(lambda kw=kw: vit(**{**kw, "position": "learned"}), id=f"vit-{kw}")
                            for kw in LLAMA_VARIANTS])
def test_every_parameter_has_the_expected_role(model):
    model = model()
    names = all_names(model)
    assert list(model_roles(model)) == [n for n, _ in model.named_parameters()]
    for name in names:
        role = role_of(name)
        assert (role.name, role.decay_group, role.tp_style, role.init) == expected_role(name), name


def test_the_models_cover_the_table():
    """Every row of the table names some parameter of some variant: no row is dead."""
    names = {n for kw in GPT_VARIANTS + LLAMA_VARIANTS for n in all_names(gpt(**kw))}
    names |= {n for kw in VIT_VARIANTS for n in all_names(vit(**kw))}
    for row in roles.ROLE_TABLE:
        assert any(re.fullmatch(row.pattern, n) for n in names), row.pattern


def test_unknown_name_is_a_one_line_error_naming_the_table():
    with pytest.raises(MegarankError) as err:
        role_of("blocks.0.mlp.aux_proj.weight")
    assert "\n" not in str(err.value)
    assert "'blocks.0.mlp.aux_proj.weight'" in str(err.value) and "megarank/models/roles.py" in str(err.value)
    assert roles.find_role("adapter.weight") is None


def test_a_mistyped_row_fails_at_import():
    with pytest.raises(ValueError, match="'atn' is not one of"):
        roles._row(r"x\.weight", "x", "atn", "column", "normal")


def test_biases_follow_their_linear():
    """A column-parallel linear's bias is split with its outputs; a row-parallel one's is added whole."""
    bias_style = {"column": "column", "row": "replicated", "replicated": "replicated"}  # by the weight's style
    for name in all_names(gpt(bias=True)):
        if name.endswith(".bias") and name.startswith("blocks."):
            weight_style = role_of(name.removesuffix("bias") + "weight").tp_style
            assert role_of(name).tp_style == bias_style[weight_style], name


def old_name_based_init(model: nn.Module, std: float, n_layers: int, *, vit_head: bool) -> None:
    """The init the models had before the roles table, by names (the reference for the draw order)."""
    residual_std = std / math.sqrt(2 * n_layers)
    for name, p in model.named_parameters():
        if name.endswith("bias") or (vit_head and name == "head.weight"):
            nn.init.zeros_(p)
        elif ".ln_" in name or name.startswith("ln_"):
            nn.init.ones_(p)
        elif name.endswith(("o_proj.weight", "fc_out.weight")):
            nn.init.normal_(p, mean=0.0, std=residual_std)
        else:
            nn.init.normal_(p, mean=0.0, std=std)


@pytest.mark.parametrize("family, kw", [("gpt", kw) for kw in GPT_VARIANTS] + [("vit", kw) for kw in VIT_VARIANTS])
def test_init_by_role_draws_what_the_name_based_init_drew(family, kw):
    model = (gpt if family == "gpt" else vit)(**kw)
    torch.manual_seed(3)
    model.reset_parameters()  # init_by_role, as at construction
    by_role = {name: p.detach().clone() for name, p in model.named_parameters()}
    torch.manual_seed(3)
    old_name_based_init(model, model.cfg.init_std, model.cfg.n_layers, vit_head=family == "vit")
    for name, p in model.named_parameters():
        assert torch.equal(by_role[name], p), name


def test_attention_layers_in_order_under_a_wrapper():
    model = gpt(n_layers=3)

    class Wrapper(nn.Module):  # names become module.blocks.<i>..., as under DDP or an engine
        def __init__(self, inner):
            super().__init__()
            self.module = inner
            self.scale = nn.Parameter(torch.ones(1))  # a wrapper's own parameter, of no role

    for found in (attention_layers(model), attention_layers(Wrapper(model))):
        assert [layer for layer, _ in found] == [0, 1, 2]
        for layer, projections in found:
            attn = model.blocks[layer].attn
            assert tuple(projections) == ATTENTION_ROLES
            assert all(projections[r] is getattr(attn, f"{r}_proj").weight for r in ATTENTION_ROLES)
    assert attention_layers(nn.Linear(2, 2)) == []


def test_tensor_records_give_role_style_and_global_shape():
    model = gpt(tie_embeddings=False)
    records = tensor_records(model, tp_size=2)
    assert list(records) == [n for n, _ in model.named_parameters()]
    assert records["wte.weight"] == {"role": "embedding", "decay_group": "other", "tp_style": "vocab",
                                     "shape": [40, 16]}  # the local table doubled: records assume a TP shard
    assert records["blocks.0.attn.o_proj.weight"]["shape"] == [16, 32]
    assert records["ln_f.weight"]["shape"] == [16]


def test_adding_a_projection_is_one_row(monkeypatch):
    """A new MLP projection (aux_proj): one row, and the decay groups, the TP plan and the init take it up."""
    from megarank.optim.groups import build_param_groups
    from megarank.parallel.tensor_parallel import tp_plan

    row = roles._row(roles._BLOCK + r"mlp\.aux_proj\.weight", "mlp_aux", "mlp", "column", "normal")
    monkeypatch.setattr(roles, "_COMPILED", roles._COMPILED + ((re.compile(row.pattern), row.role),))
    model = gpt()
    for block in model.blocks:
        block.mlp.aux_proj = nn.Linear(16, model.cfg.ffn_dim, bias=False)
    model.reset_parameters()
    gate = model.blocks[1].mlp.aux_proj.weight
    groups = {g["name"]: g["params"] for g in build_param_groups(model, OptimConfig())}
    assert any(p is gate for p in groups["mlp"]) and len(groups["mlp"]) == 3 * 2
    assert tp_plan(model)["blocks.1.mlp.aux_proj"] == "column"
    assert gate.std().item() == pytest.approx(model.cfg.init_std, rel=0.3)  # 'normal', not residual
    assert set(DECAY_GROUPS) == set(groups)


def test_llama_options_reach_groups_plan_and_init():
    """A LLaMA-style GPT (SwiGLU, GQA, q/k norms): gate/up/down in the mlp decay group, q/k norms undecayed; gate
    and up column-, down row-parallel, k/v column-parallel at their smaller width, the norms left whole; down
    drawn at the residual std, the norms ones."""
    from megarank.optim.groups import build_param_groups
    from megarank.parallel.tensor_parallel import tp_plan

    torch.manual_seed(0)
    model = gpt(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, position="rotary", norm="rmsnorm", mlp="swiglu",
                qk_norm=True, ffn_multiple=64)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in build_param_groups(model, OptimConfig())}
    mlp, attn = model.blocks[0].mlp, model.blocks[0].attn
    assert {id(mlp.gate_proj.weight), id(mlp.up_proj.weight), id(mlp.down_proj.weight)} <= groups["mlp"]
    assert {id(attn.q_norm.weight), id(attn.k_norm.weight), id(model.ln_f.weight)} <= groups["no_decay"]
    assert len(groups["mlp"]) == 2 * 3 and len(groups["attn"]) == 2 * 4
    plan = tp_plan(model)
    assert {k.removeprefix("blocks.0."): v for k, v in plan.items() if k.startswith("blocks.0.")} == {
        "attn.q_proj": "column", "attn.k_proj": "column", "attn.v_proj": "column", "attn.o_proj": "row",
        "mlp.gate_proj": "column", "mlp.up_proj": "column", "mlp.down_proj": "row"}
    assert attn.k_proj.weight.shape == (2 * 16, 64) and mlp.gate_proj.weight.shape == (192, 64)
    assert mlp.down_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.1)
    assert mlp.up_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(attn.q_norm.weight, torch.ones(16)) and torch.equal(model.ln_f.weight, torch.ones(64))
