"""Tensor parallelism of the LLaMA options against TP=1. In 2 real gloo processes: a tiny LLaMA-style GPT
(RMSNorm, SwiGLU with biases, 4 query heads over 2 K/V heads, per-head q/k norms, RoPE) sharded by
apply_tensor_parallel gives the loss of the whole model and each parameter's gradient equal (within 1e-5) to
this rank's slice of the single-device gradient — the replicated q/k norm gains, which each rank sees only
for its own heads, whole. Through the real launcher: the tiny LLaMA's losses at TP=2×DP=2 within 1e-5 relative
of the one-process run for 8 steps, and resume bit for bit in both layouts (tests/runs.py 'llama-*')."""

from __future__ import annotations

import copy
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megarank.config import ModelConfig
from megarank.models.gpt import GPT
from megarank.models.roles import role_of, split_dim
from megarank.parallel.tensor_parallel import apply_tensor_parallel
from tests.helpers import free_port, train_losses, train_steps

TP = 2


def check_llama_tp(rank: int, group) -> None:
    torch.manual_seed(0)
    full = GPT(ModelConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, seq_len=8, vocab_size=20, bias=True,
                           position="rotary", norm="rmsnorm", mlp="swiglu", ffn_multiple=16, qk_norm=True,
                           attn_backend="math"))
    with torch.no_grad():  # gains and biases away from their init, so a wrong slice or a missing sum shows
        for p in full.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sharded = copy.deepcopy(full)
    apply_tensor_parallel(sharded, SimpleNamespace(tp_size=TP, tp_rank=rank, tp_group=group), seed=0,
                          device=torch.device("cpu"))
    ids, targets = torch.randint(0, 20, (3, 8)), torch.randint(0, 20, (3, 8))
    expected = full(ids, targets)
    expected.backward()
    loss = sharded(ids, targets)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    reference = dict(full.named_parameters())
    for name, param in sharded.named_parameters():
        dim = split_dim(role_of(name).tp_style)
        grad = reference[name].grad if dim is None else reference[name].grad.chunk(TP, dim=dim)[rank]
        torch.testing.assert_close(param.grad, grad, rtol=1e-5, atol=1e-6, msg=name)


def worker(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=TP)
    try:
        check_llama_tp(rank, dist.new_group(list(range(TP))))
    finally:
        dist.destroy_process_group()


def test_sharded_llama_matches_the_whole_model():
    mp.spawn(worker, args=(free_port(),), nprocs=TP, join=True)


def test_tp2_dp2_losses_match_one_process(launched):
    reference, losses = train_losses(launched("llama-reference")), train_losses(launched("llama-tp2-dp2-zero1"))
    assert sorted(losses) == sorted(reference) == list(range(1, 9))
    for step, expected in reference.items():
        assert losses[step] == pytest.approx(expected, rel=1e-5), f"step {step}"


@pytest.mark.parametrize("name", ["llama-reference", "llama-tp2-dp2-zero1"])
def test_resume_is_bitwise(name, launched, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(launched(name), run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "global_step8")
    launched.relaunch(name, run_dir)
    assert train_losses(run_dir) == train_losses(launched(name))
    assert train_steps(run_dir) == list(range(1, 9))
