"""Tensor-parallel layers and mappings in 2 real gloo processes against the full single-device layers:
outputs, input gradients and (gathered) weight gradients equal within 1e-5; the vocab-parallel loss equals
F.cross_entropy on the full logits, and so does it taken a chunk of tokens at a time (models/chunked_loss.py,
gradients included); the TP dropout stream differs across TP ranks while the default one does not. The TP plan
read off the roles table against the plan written out by hand, and the step that applies it (in one process)
against slices of the TP=1 weights."""

from __future__ import annotations

import os
import re
from functools import partial

import pytest

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from megarank.models.chunked_loss import chunked_next_token_loss
from megarank.parallel.layers import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                      vocab_parallel_cross_entropy)
from megarank.parallel.mappings import (copy_to_tp_region, gather_from_tp_region, reduce_from_tp_region,
                                        scatter_to_tp_region)
from megarank.parallel.random import TPRandomState
from tests.helpers import free_port

TP = 2


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def gather(t: torch.Tensor, dim: int, group=None) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(TP)]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def check_mappings(rank, group):
    x = torch.arange(8.0).reshape(2, 4).requires_grad_()
    y = scatter_to_tp_region(x, group)
    close(y, x.detach().chunk(TP, -1)[rank])
    (y * (rank + 1)).sum().backward()  # backward all-gathers: rank r's chunk carries gradient r + 1
    close(x.grad, torch.tensor([[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]]))

    z = torch.full((3,), float(rank + 1), requires_grad=True)
    close(reduce_from_tp_region(z, group), torch.full((3,), 3.0))
    c = torch.ones(3, requires_grad=True)
    (copy_to_tp_region(c, group) * (rank + 1)).sum().backward()
    close(c.grad, torch.full((3,), 3.0))  # backward all-reduce sums both ranks' partial gradients
    g = torch.full((2, 1), float(rank), requires_grad=True)
    close(gather_from_tp_region(g, group), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def check_layers(rank, group):
    torch.manual_seed(0)
    d, hidden, vocab = 8, 12, 10
    fc_in, fc_out, emb = nn.Linear(d, hidden), nn.Linear(hidden, d), nn.Embedding(vocab, d)
    ids = torch.randint(0, vocab, (3, 5))
    targets = torch.randint(0, vocab, (15,))

    def full_forward():
        h = emb(ids)
        out = fc_out(F.gelu(fc_in(h)))
        logits = out @ emb.weight.T
        return F.cross_entropy(logits.view(-1, vocab), targets), h

    reference_loss, _ = full_forward()
    reference_loss.backward()

    kw = dict(tp_rank=rank, tp_size=TP, group=group)
    col, row = ColumnParallelLinear(fc_in, **kw), RowParallelLinear(fc_out, **kw)
    vemb = VocabParallelEmbedding(emb, **kw)
    head = ColumnParallelLinear(nn.Linear(d, vocab, bias=False), **kw, weight=vemb.weight)  # tied
    out = row(F.gelu(col(vemb(ids))))
    loss = vocab_parallel_cross_entropy(head(out).view(15, -1), targets, group=group, vocab_start=vemb.vocab_start)
    close(loss, reference_loss.detach())
    loss.backward()
    close(gather(col.weight.grad, 0, group), fc_in.weight.grad)
    close(gather(col.bias.grad, 0, group), fc_in.bias.grad)
    close(gather(row.weight.grad, 1, group), fc_out.weight.grad)
    close(row.bias.grad, fc_out.bias.grad)
    close(gather(vemb.weight.grad, 0, group), emb.weight.grad)  # embedding + tied head gradients
    assert col.weight.tensor_model_parallel and not hasattr(row.bias, "tensor_model_parallel")


def check_chunked_loss(rank, group):
    """The chunked loss over a vocab-parallel tied head (15 tokens in chunks of 4: the last one partial)
    against the plain loss on the full logits: loss, trunk and embedding gradients."""
    torch.manual_seed(0)
    d, vocab, n_tokens = 8, 10, 15
    trunk, emb = nn.Linear(d, d), nn.Embedding(vocab, d)
    ids, targets = torch.randint(0, vocab, (n_tokens,)), torch.randint(0, vocab, (n_tokens,))
    reference_loss = F.cross_entropy(trunk(emb(ids)) @ emb.weight.T, targets)
    reference_loss.backward()

    kw = dict(tp_rank=rank, tp_size=TP, group=group)
    tp_trunk, vemb = nn.Linear(d, d), VocabParallelEmbedding(emb, **kw)
    tp_trunk.load_state_dict(trunk.state_dict())  # replicated, as outside the TP plan
    head = ColumnParallelLinear(nn.Linear(d, vocab, bias=False), **kw, weight=vemb.weight)
    loss_fn = partial(vocab_parallel_cross_entropy, group=group, vocab_start=vemb.vocab_start)
    loss = chunked_next_token_loss(head, loss_fn, tp_trunk(vemb(ids)), targets, chunk_tokens=4)
    close(loss, reference_loss.detach())
    loss.backward()
    close(tp_trunk.weight.grad, trunk.weight.grad)
    close(tp_trunk.bias.grad, trunk.bias.grad)
    close(gather(vemb.weight.grad, 0, group), emb.weight.grad)  # embedding + tied head gradients


def check_rng(rank, group):
    torch.manual_seed(7)
    tp_rng = TPRandomState(7, rank, torch.device("cpu"))
    with tp_rng.fork():
        local = torch.rand(4)
    replicated = torch.rand(4)
    assert not torch.equal(gather(local.unsqueeze(0), 0, group)[0], gather(local.unsqueeze(0), 0, group)[1])
    both = gather(replicated.unsqueeze(0), 0, group)
    assert torch.equal(both[0], both[1])
    torch.manual_seed(7)
    assert torch.equal(torch.rand(4), replicated)  # fork() left the default stream where it was


def worker(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=TP)
    try:
        group = dist.new_group(list(range(TP)))
        check_mappings(rank, group)
        check_layers(rank, group)
        check_chunked_loss(rank, group)
        check_rng(rank, group)
    finally:
        dist.destroy_process_group()


def test_tp_layers_match_full_layers():
    mp.spawn(worker, args=(free_port(),), nprocs=TP, join=True)


def test_the_plan_is_read_off_the_roles():
    """tp_plan against the plan written out by hand: the GPT's q, k, v, fc_in column-, o, fc_out row-parallel,
    the embedding and the head split by vocabulary; nothing of the ViT's is sharded."""
    from megarank.config import ModelConfig
    from megarank.models.gpt import GPT
    from megarank.models.vit import ViT
    from megarank.parallel.tensor_parallel import tp_plan

    gpt = GPT(ModelConfig(n_layers=2, d_model=16, n_heads=2, seq_len=8, vocab_size=20, bias=True))
    per_block = {"attn.q_proj": "column", "attn.k_proj": "column", "attn.v_proj": "column", "attn.o_proj": "row",
                 "mlp.fc_in": "column", "mlp.fc_out": "row"}
    expected = {"wte": "vocab", **{f"blocks.{i}.{m}": s for i in range(2) for m, s in per_block.items()},
                "lm_head": "vocab"}
    assert tp_plan(gpt) == expected
    vit = ViT(ModelConfig(family="vit", n_layers=1, d_model=16, n_heads=2, image_size=8, patch_size=4,
                          n_classes=5))
    assert {name for name in tp_plan(vit)} == {f"blocks.0.{m}" for m in per_block}  # the shared block only


def test_a_style_the_module_cannot_take_is_an_error(monkeypatch):
    from megarank.errors import MegarankError
    from megarank.models import roles
    from megarank.parallel.tensor_parallel import tp_plan

    conv = roles.Role("patch_embed", "other", "column", "normal")
    monkeypatch.setattr(roles, "_COMPILED", ((re.compile(r"patch_embed\.proj\.weight"), conv),) + roles._COMPILED)
    model = nn.Module()
    model.patch_embed = nn.Module()
    model.patch_embed.proj = nn.Conv2d(1, 4, 2, bias=False)
    with pytest.raises(MegarankError, match="'patch_embed.proj.weight' has TP style 'column'.*Conv2d cannot take"):
        tp_plan(model)


@pytest.mark.parametrize("tie", [True, False])
def test_apply_tensor_parallel_shards_by_role(tie):
    """The step on one process as TP rank 1 of 2 (construction needs no collective): each planned module is
    its parallel layer holding rank 1's slice of the TP=1 weight, a tied head shares the embedding's shard,
    the loss and the attention dropout's RNG hooks are set, and everything else is untouched."""
    from types import SimpleNamespace

    from megarank.config import ModelConfig
    from megarank.models.gpt import GPT
    from megarank.parallel.tensor_parallel import apply_tensor_parallel

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layers=1, d_model=16, n_heads=2, seq_len=8, vocab_size=20, bias=True,
                            tie_embeddings=tie))
    full = {name: p.detach().clone() for name, p in model.named_parameters()}
    layout = SimpleNamespace(tp_size=TP, tp_rank=1, tp_group=None)
    rng = apply_tensor_parallel(model, layout, seed=0, device=torch.device("cpu"))
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert isinstance(attn.q_proj, ColumnParallelLinear) and isinstance(mlp.fc_in, ColumnParallelLinear)
    assert isinstance(attn.o_proj, RowParallelLinear) and isinstance(mlp.fc_out, RowParallelLinear)
    assert isinstance(model.wte, VocabParallelEmbedding) and isinstance(model.lm_head, ColumnParallelLinear)
    assert isinstance(model.ln_f, nn.LayerNorm) and isinstance(model.wpe, nn.Embedding)
    assert (model.lm_head.weight is model.wte.weight) == tie
    sharded = dict(model.named_parameters())
    torch.testing.assert_close(sharded["blocks.0.attn.q_proj.weight"], full["blocks.0.attn.q_proj.weight"][8:])
    torch.testing.assert_close(sharded["blocks.0.attn.q_proj.bias"], full["blocks.0.attn.q_proj.bias"][8:])
    torch.testing.assert_close(sharded["blocks.0.mlp.fc_out.weight"], full["blocks.0.mlp.fc_out.weight"][:, 32:])
    torch.testing.assert_close(sharded["blocks.0.mlp.fc_out.bias"], full["blocks.0.mlp.fc_out.bias"])  # whole
    torch.testing.assert_close(sharded["wte.weight"], full["wte.weight"][10:])
    if not tie:
        torch.testing.assert_close(sharded["lm_head.weight"], full["lm_head.weight"][10:])
    assert model.loss_fn.func is vocab_parallel_cross_entropy and model.loss_fn.keywords["vocab_start"] == 10
    assert attn.rng_region == rng.fork
