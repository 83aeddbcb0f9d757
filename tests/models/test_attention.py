"""Attention backends agree with the explicit math path (SDPA on CPU; the GPU kernels in tests/gpu/), and RoPE
makes q·k depend only on the relative position."""

from __future__ import annotations

import pytest
import torch

from megarank.models.attention import RotaryEmbedding, attention


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_matches_math(causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, dtype=torch.float64) for _ in range(3))
    expected = attention(q, k, v, causal=causal, backend="math")
    torch.testing.assert_close(attention(q, k, v, causal=causal, backend="sdpa"), expected)
    # auto resolves to SDPA on CPU
    torch.testing.assert_close(attention(q, k, v, causal=causal, backend="auto"), expected)


def test_causal_math_ignores_future():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    out = attention(q, k, v, causal=True, backend="math")
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4:], v2[:, :, 4:] = 0.0, 7.0
    torch.testing.assert_close(attention(q, k2, v2, causal=True, backend="math")[:, :, :4], out[:, :, :4])


def test_rotary_scores_depend_on_relative_position():
    rope = RotaryEmbedding(8, 10000.0)
    torch.manual_seed(0)
    q, k = torch.randn(8), torch.randn(8)
    seq_q = rope(q.expand(1, 1, 12, 8).contiguous())[0, 0]
    seq_k = rope(k.expand(1, 1, 12, 8).contiguous())[0, 0]
    torch.testing.assert_close(seq_q[5] @ seq_k[3], seq_q[9] @ seq_k[7])
    assert not torch.allclose(seq_q[5] @ seq_k[3], seq_q[5] @ seq_k[4])
