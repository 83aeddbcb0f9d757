"""Each role's weight decay reaches the weights on a real DeepSpeed engine step (ZeRO-1, one process):
decoupled (AdamW): the decayed run equals the undecayed one minus lr·wd·w0, per group (the qk and ov groups
too, when split); L2 (Adam + L2): the step equals torch.optim.Adam on a gradient that gained wd·w, per group.
A decay set on the optimizer's groups between steps (optim/decay.py apply_decay, as the train loop does) is the
one the next step applies, at ZeRO 0-3: switched off, the run equals one built without decay, bit for bit."""

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


def test_split_products_decay_each_by_its_own_wd(initial_model):
    """optim.wd_qk != optim.wd_ov: W_Q, W_K shrink by lr·wd_qk·w, W_V, W_O by lr·wd_ov·w, in their own groups."""
    w0 = {n: p.detach().clone() for n, p in initial_model.named_parameters()}
    cfg = make_cfg(True, True)
    cfg.optim.wd_qk, cfg.optim.wd_ov = 0.3, 0.02
    decayed = engine_steps(cfg, copy.deepcopy(initial_model))
    plain = engine_steps(make_cfg(True, False), copy.deepcopy(initial_model))
    wd = {**WD, "qk": 0.3, "ov": 0.02}
    for name, w in w0.items():
        group = role_of(name).product or role(name)
        torch.testing.assert_close(decayed[name], plain[name] - LR * wd[group] * w, rtol=0, atol=1e-7, msg=name)


def losses_after(engine, steps: int, before_each=lambda step: None) -> list[float]:
    x, y = batch()
    losses = []
    for step in range(steps):
        before_each(step)
        loss = engine(x, y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_decay_switched_off_between_steps_applies_at_every_zero_stage(initial_model, stage):
    """On from step 0, off from step 1 on (set through optimizer_groups), against a run with the decay off
    from its build: steps 1.. see the same weights only if step 0's decay and nothing after it was applied."""
    from megarank.optim.decay import apply_decay
    from megarank.train.engine import optimizer_groups

    def engine_for(cfg):
        cfg.zero.stage = stage
        return build_engine(copy.deepcopy(initial_model), cfg, grad_accum=1, device=torch.device("cpu"))[0]

    switched = make_cfg(True, True)
    switched.optim.wd_schedule, switched.optim.wd_schedule_start, switched.optim.wd_final_ratio = "step", 1, 0.0
    engine = engine_for(switched)
    changed = losses_after(engine, 4, lambda step: apply_decay(optimizer_groups(engine), switched.optim, step, 4))
    constant = losses_after(engine_for(make_cfg(True, True)), 4)
    assert changed[:2] == constant[:2] and changed[2:] != constant[2:]  # step 1's loss: the weights after step 0

    # the same run resumed at step 1 with the decay off: the first step by hand, then the groups' decay zeroed
    undecayed_after_one = make_cfg(True, True)
    engine = engine_for(undecayed_after_one)
    resumed = losses_after(engine, 4, lambda step: step == 1 and [g.update(weight_decay=0.0)
                                                                  for g in optimizer_groups(engine)])
    assert resumed == changed


def test_decay_set_on_the_optimizer_groups_is_the_decay_applied(initial_model):
    """apply_decay on engine.lr_scheduler's optimizer (train/engine.py optimizer_groups) reaches the step: a
    schedule that switches every group off at step 0 gives the undecayed weights exactly, though the groups
    were built with wd_attn 0.3 (the decay a loaded checkpoint's state would restore)."""
    from megarank.optim.decay import apply_decay
    from megarank.train.engine import optimizer_groups

    cfg = make_cfg(True, True)
    engine, _ = build_engine(copy.deepcopy(initial_model), cfg, grad_accum=1, device=torch.device("cpu"))
    assert {g["name"]: g["weight_decay"] for g in optimizer_groups(engine)} == WD
    cfg.optim.wd_schedule, cfg.optim.wd_final_ratio = "step", 0.0
    assert apply_decay(optimizer_groups(engine), cfg.optim, 0, 8) == dict.fromkeys(WD, 0.0)
    x, y = batch()
    engine.backward(engine(x, y))
    engine.step()
    plain = engine_steps(make_cfg(True, False), copy.deepcopy(initial_model))
    for name, p in engine.module.named_parameters():
        assert torch.equal(p.detach(), plain[name]), name
