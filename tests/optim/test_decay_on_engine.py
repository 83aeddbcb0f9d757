"""Each role's weight decay reaches the weights on a real DeepSpeed engine step (ZeRO-1, one process):
decoupled (AdamW): the decayed run equals the undecayed one minus lr·wd·w0, per group;
L2 (Adam + L2): the step equals torch.optim.Adam on a gradient that gained wd·w, per group."""

from __future__ import annotations

import copy

import pytest
import torch

from megarank.config import ExperimentConfig, ModelConfig
from megarank.models.gpt import GPT
from megarank.models.roles import role_of
from megarank.train.distributed import init_distributed
from megarank.train.engine import build_engine

WD = {"attn": 0.3, "mlp": 0.1, "other": 0.05, "no_decay": 0.0}
LR = 0.01


def make_cfg(decoupled: bool, decay: bool) -> ExperimentConfig:
    cfg = ExperimentConfig(model=ModelConfig(n_layers=2, d_model=32, n_heads=4, seq_len=8, vocab_size=64))
    cfg.train.micro_batch = cfg.train.global_batch = 4
    cfg.train.precision = "fp32"
    cfg.zero.stage = 1
    o = cfg.optim
    o.lr, o.warmup_steps, o.grad_clip, o.decoupled = LR, 0, 0.0, decoupled
    o.wd_attn, o.wd_mlp, o.wd_other = (WD["attn"], WD["mlp"], WD["other"]) if decay else (0.0, 0.0, 0.0)
    return cfg


def role(name: str) -> str:
    """The decay group of the parameter called `name` (its role's, models/roles.py)."""
    return role_of(name).decay_group


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 64, (4, 8), generator=g), torch.randint(0, 64, (4, 8), generator=g)


def engine_steps(cfg: ExperimentConfig, model: GPT, steps: int = 1) -> dict[str, torch.Tensor]:
    engine, _ = build_engine(model, cfg, grad_accum=1, device=torch.device("cpu"))
    x, y = batch()
    for _ in range(steps):
        engine.backward(engine(x, y))
        engine.step()
    return {n: p.detach().clone() for n, p in engine.module.named_parameters()}


@pytest.fixture(scope="module")
def initial_model():
    init_distributed()
    torch.manual_seed(0)
    return GPT(make_cfg(True, True).model)


def test_decoupled_decay_shrinks_each_group_by_lr_wd_w(initial_model):
    w0 = {n: p.detach().clone() for n, p in initial_model.named_parameters()}
    decayed = engine_steps(make_cfg(True, True), copy.deepcopy(initial_model))
    plain = engine_steps(make_cfg(True, False), copy.deepcopy(initial_model))
    for name, w in w0.items():
        expected = plain[name] - LR * WD[role(name)] * w
        torch.testing.assert_close(decayed[name], expected, rtol=0, atol=1e-7, msg=name)
    assert {role(n) for n in w0} == set(WD)


def test_l2_adds_wd_w_to_the_gradient_adam_sees(initial_model):
    steps = 3  # Adam's first step is nearly sign(g); later steps make the update depend on g's size too
    stepped = engine_steps(make_cfg(False, True), copy.deepcopy(initial_model), steps)
    undecayed = engine_steps(make_cfg(False, False), copy.deepcopy(initial_model), steps)

    reference = copy.deepcopy(initial_model)
    cfg = make_cfg(False, True).optim
    adam = torch.optim.Adam(reference.parameters(), lr=LR, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    x, y = batch()
    for _ in range(steps):
        adam.zero_grad()
        l2 = sum(WD[role(n)] / 2 * p.pow(2).sum() for n, p in reference.named_parameters())
        (reference(x, y) + l2).backward()
        adam.step()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(stepped[name], p.detach(), rtol=0, atol=1e-6, msg=name)
        if WD[role(name)] > 0:  # the control: without L2 this group ends elsewhere
            assert (stepped[name] - undecayed[name]).abs().max() > 1e-5, name
