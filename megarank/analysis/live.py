"""Rank metrics of a model in memory, for logging during training (every analysis.every steps), so a run
shows its attention ranks falling live in TensorBoard.

Takes a plain GPT or ViT module (not the DeepSpeed engine; any dtype, bf16 included) and calls nothing
distributed, so any rank may call it alone. It finds each block's attention projections by their roles q, k,
v, o (megarank/models/roles.py's attention_layers) and runs the same factor trick as `megarank-rank` in float64
on the weights' device: four (d_model × d_head) QRs per head, nothing of size d_model². Under grouped-query
attention (model.n_kv_heads) each query head is paired with the K/V head it reads, h // (n_heads / n_kv_heads),
as for an offline checkpoint (analysis/spectra.py layer_spectra); with model.qk_norm the qk product is
W_Q,hᵀW_K,h of the raw weights, the per-head norms sitting between them. On a TP-sharded module it summarises
this rank's own heads (and the K/V heads they read, which the same rank holds). Under ZeRO-3 the parameters are partitioned: pass
`gather` (e.g. deepspeed.zero.GatheredParameters), which then brings in one layer's four projections at a
time, or it raises. The training loop's wrapper (megarank/train/rank_logging.py) does both for a run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from megarank.analysis.spectra import PRODUCTS, head_metrics, layer_spectra
from megarank.models.roles import attention_layers


@torch.no_grad()
def attention_rank_summary(model: nn.Module, n_heads: int, rtol: float,
                           gather: Callable[[list[nn.Parameter]], contextlib.AbstractContextManager] | None = None
                           ) -> dict[str, float]:
    """Scalars for a metrics logger: per layer 'rank/qk_mean/layer<i>' and 'rank/ov_mean/layer<i>' (mean
    numerical rank over the layer's heads at rtol), and over all layers 'rank/{qk,ov}_mean',
    'effective_rank/{qk,ov}_mean' and 'balance/{qk,ov}_mean' (‖ABᵀ‖_* / ((‖A‖²+‖B‖²)/2), 1 when balanced).
    n_heads: the model's total head count (d_head = d_model / n_heads). gather(params): a context in which
    the given (partitioned) parameters are whole; under it this is a collective, so every rank must call."""
    found = attention_layers(model)
    if not found:
        raise ValueError("no attention modules in this model: no parameter has role q, k, v or o "
                         "(megarank/models/roles.py)")
    out: dict[str, float] = {}
    pooled = {p: {"rank": [], "effective_rank": [], "balance": []} for p in PRODUCTS}
    for layer, projections in found:
        q, k, v, o = weights = [projections[role] for role in ("q", "k", "v", "o")]
        with gather(weights) if gather is not None else contextlib.nullcontext():
            if q.numel() == 0:
                raise ValueError("attention weights are empty (ZeRO-3 partitions them): gather the parameters first "
                                 "(pass gather=)")
            device = q.device if q.device.type == "cuda" else torch.device("cpu")  # float64 where it is supported
            spectra = layer_spectra(q, k, v, o, q.shape[1] // n_heads, dtype=torch.float64, device=device)
        for product, s in spectra.items():
            metrics = head_metrics(s, rtol=rtol)
            out[f"rank/{product}_mean/layer{layer}"] = float(metrics["rank"].mean())
            for name, values in pooled[product].items():
                values.append(metrics[name])
    for product in PRODUCTS:
        for name, values in pooled[product].items():
            joined = np.concatenate(values)
            out[f"{name}/{product}_mean"] = float(np.nanmean(joined)) if np.isfinite(joined).any() else float("nan")
    return out
