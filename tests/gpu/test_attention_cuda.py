"""Every attention kernel a GPU offers against the math path in fp32, in bf16 and fp16, forward and backward:
SDPA pinned to its flash and to its memory-efficient kernel (so megarank's call is one those kernels accept),
flash_attn where it is installed, and `auto`. A kernel passes when its error against the fp32 reference is no
larger than the plain math path's own error in the same dtype (plus a margin of one rounding step): as
accurate as the naive computation, which is what lower precision promises."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from megarank.models.attention import HAS_FLASH_ATTN, attention

KERNELS = ["sdpa-flash", "sdpa-efficient", "auto"] + (["flash_attn"] if HAS_FLASH_ATTN else [])
ROUNDING = {torch.bfloat16: 2**-8, torch.float16: 2**-11}


def _run(kernel: str, q, k, v, causal: bool):
    """Output and input gradients of one kernel (the gradient of a fixed random projection of the output)."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    if kernel.startswith("sdpa-"):
        pinned = SDPBackend.FLASH_ATTENTION if kernel == "sdpa-flash" else SDPBackend.EFFICIENT_ATTENTION
        with sdpa_kernel(pinned):
            out = attention(q, k, v, causal=causal, backend="sdpa")
    else:
        backend = {"flash_attn": "flash", "auto": "auto", "math": "math"}[kernel]
        out = attention(q, k, v, causal=causal, backend=backend)
    direction = torch.randn(out.shape, generator=torch.Generator(device="cuda").manual_seed(1), device="cuda")
    (out.float() * direction).sum().backward()
    return [t.float() for t in (out, q.grad, k.grad, v.grad)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_math_path(kernel, causal, dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 256, 64, device="cuda", generator=gen) for _ in range(3))
    reference = _run("math", q, k, v, causal)  # fp32
    naive = _run("math", q.to(dtype), k.to(dtype), v.to(dtype), causal)
    tested = _run(kernel, q.to(dtype), k.to(dtype), v.to(dtype), causal)
    for name, ref, low, got in zip(("output", "dq", "dk", "dv"), reference, naive, tested):
        allowed = (low - ref).abs().max().item() + ROUNDING[dtype] * ref.abs().max().item()
        error = (got - ref).abs().max().item()
        assert error <= allowed, f"{kernel} {name}: max error {error:.2e} above the math path's {allowed:.2e}"


def test_attention_dropout_runs_on_each_kernel():
    """Training-mode dropout goes through SDPA's fused kernels: about dropout_p of the weight is dropped."""
    q, k = (torch.zeros(1, 2, 512, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.ones(1, 2, 512, 64, device="cuda", dtype=torch.bfloat16)
    for pinned in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        with sdpa_kernel(pinned):
            out = attention(q, k, v, causal=False, backend="sdpa", dropout_p=0.5)
        # uniform attention over ones: each output is (kept weight) / (1 - p), 1 in expectation
        assert abs(out.float().mean().item() - 1.0) < 0.05, pinned
