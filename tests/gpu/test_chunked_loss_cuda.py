"""The chunked loss on a GPU against the plain one: the same loss and gradients in fp32 and in bf16 weights
(the GPU's training precision), and the loss's peak memory read from CUDA's allocator at a 32k vocabulary."""

from __future__ import annotations

import pytest
import torch

from megarank.config import ModelConfig
from megarank.models.gpt import GPT


def _gpt(chunk: int, dtype: torch.dtype, vocab: int = 96, d_model: int = 32) -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layers=2, d_model=d_model, n_heads=4, seq_len=16, vocab_size=vocab,
                            loss_chunk_tokens=chunk))
    return model.to(device="cuda", dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("chunk", [16, 20, 47])
def test_same_loss_and_gradients_as_plain(chunk, dtype):
    x = torch.randint(0, 96, (3, 16), generator=torch.Generator().manual_seed(1)).cuda()
    plain, chunked = _gpt(0, dtype), _gpt(chunk, dtype)
    loss, loss_chunked = plain(x, x.roll(-1, 1)), chunked(x, x.roll(-1, 1))
    loss.backward()
    loss_chunked.backward()
    # bf16: the chunks sum their logits' gradients in another order than one big matmul
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-3}
    torch.testing.assert_close(loss_chunked.float(), loss.float(), rtol=1e-5 if dtype == torch.float32 else 1e-3,
                               atol=0)
    for (name, p), (_, q) in zip(plain.named_parameters(), chunked.named_parameters()):
        torch.testing.assert_close(q.grad.float(), p.grad.float(), **tol, msg=name)


def _loss_peak_bytes(chunk: int) -> int:
    """Peak bytes CUDA's allocator holds above the start while the LM head's loss runs forward and backward."""
    torch.manual_seed(0)
    head = torch.nn.Linear(256, 32768, bias=False, device="cuda")
    hidden = torch.randn(2048, 256, device="cuda", requires_grad=True)
    targets = torch.randint(0, 32768, (2048,), device="cuda")
    loss_fn = torch.nn.functional.cross_entropy
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    if chunk:
        from megarank.models.chunked_loss import chunked_next_token_loss

        loss = chunked_next_token_loss(head, loss_fn, hidden, targets, chunk)
    else:
        loss = loss_fn(head(hidden).float(), targets)
    loss.backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def test_chunks_cut_the_loss_peak_memory():
    plain, chunked = _loss_peak_bytes(0), _loss_peak_bytes(256)
    assert chunked * 4 < plain, (plain, chunked)
