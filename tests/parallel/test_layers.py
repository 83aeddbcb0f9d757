"""Tensor-parallel layers and mappings in 2 real gloo processes against the full single-device layers:
outputs, input gradients and (gathered) weight gradients equal within 1e-5; the vocab-parallel loss equals
F.cross_entropy on the full logits, and so does it taken a chunk of tokens at a time (models/chunked_loss.py,
gradients included); the TP dropout stream differs across TP ranks while the default one does not."""

from __future__ import annotations

import os
from functools import partial

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


def test_the_plan_names_every_sharded_module_and_nothing_else():
    from megarank.parallel.tensor_parallel import plan_style

    assert plan_style("lm_head") == "vocab_column" and plan_style("wte") == "vocab"
    assert plan_style("blocks.3.attn") == "tp_dropout"
    assert plan_style("blocks.3.attn.q_proj") == "column" and plan_style("blocks.3.attn.o_proj") == "row"
    assert plan_style("blocks.3.mlp.fc_in") == "column" and plan_style("blocks.3.mlp.fc_out") == "row"
    for replicated in ("head", "blocks.3.ln_1", "ln_f", "wpe", "patch_embed.proj", "blocks.3.mlp"):
        assert plan_style(replicated) is None, replicated
