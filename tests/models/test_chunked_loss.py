"""The chunked loss against the plain one: the same loss and gradients (every parameter, tied head included)
for chunk sizes that do and do not divide the token count; and at vocab 32k the loss's peak memory (logits
plus their gradient), counted from the tensors autograd actually allocates, falls by more than 4×."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from megarank.config import ModelConfig
from megarank.models.chunked_loss import chunked_next_token_loss
from megarank.models.gpt import GPT


def _gpt(chunk: int) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layers=2, d_model=32, n_heads=4, seq_len=16, vocab_size=96, loss_chunk_tokens=chunk))


@pytest.mark.parametrize("chunk", [16, 20, 47, 1000])
def test_same_loss_and_gradients_as_plain(chunk):
    x = torch.randint(0, 96, (3, 16), generator=torch.Generator().manual_seed(1))
    plain, chunked = _gpt(0), _gpt(chunk)
    loss, loss_chunked = plain(x, x.roll(-1, 1)), chunked(x, x.roll(-1, 1))
    loss.backward()
    loss_chunked.backward()
    torch.testing.assert_close(loss_chunked, loss, rtol=1e-6, atol=0)
    for (name, p), (_, q) in zip(plain.named_parameters(), chunked.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of live storage allocated inside the mode, on CPU where torch keeps no allocator statistics.

    Every aten op's outputs pass through here (below autograd, so the backward's too). A new storage is
    counted once, keyed by its data pointer, however many tensors come to alias it (`t`, `detach` and in-place
    ops return aliases that are not marked as views below autograd), and uncounted when the last tensor seen
    on it is freed (weakref finalisers; torch keeps a tensor's Python object alive while autograd holds it).
    An output aliasing an input made before the mode (a weight's transpose) allocates nothing."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.aliases: dict[int, int] = {}  # storage data pointer -> live tensors seen on it

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or not tensor.untyped_storage().nbytes():
                continue
            key, size = tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()
            if key not in self.aliases:
                if key in inputs:
                    continue
                self.live += size
                self.peak = max(self.peak, self.live)
            self.aliases[key] = self.aliases.get(key, 0) + 1
            weakref.finalize(tensor, self._release, key, size)
        return out

    def _release(self, key: int, size: int) -> None:
        self.aliases[key] -= 1
        if not self.aliases[key]:
            del self.aliases[key]
            self.live -= size


def _loss_peak(chunk: int) -> float:
    torch.manual_seed(0)
    vocab, d_model, tokens = 32000, 64, 2048
    head = torch.nn.Linear(d_model, vocab, bias=False)
    hidden = torch.randn(tokens, d_model, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    with PeakLiveBytes() as meter:
        if chunk:
            loss = chunked_next_token_loss(head, torch.nn.functional.cross_entropy, hidden, targets, chunk)
        else:
            loss = torch.nn.functional.cross_entropy(head(hidden).float(), targets)
        loss.backward()
    return meter.peak


def test_chunked_loss_cuts_peak_memory_by_4x():
    plain, chunked = _loss_peak(0), _loss_peak(256)
    logits = 2048 * 32000 * 4
    assert plain >= 2 * logits  # the logits and their gradient (or the saved softmax) at once
    assert chunked * 4 <= plain, f"peak {plain / 2**20:.0f} MB plain, {chunked / 2**20:.0f} MB chunked"
