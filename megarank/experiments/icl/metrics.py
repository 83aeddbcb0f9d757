"""What is recorded of a run: per layer and head, for QK (A = W_Q,hᵀ, B = W_K,hᵀ) and OV (A = W_O,h = P_h,
B = W_V,hᵀ), numerical rank (σ > rtol·σ_max), rank above atol, effective rank, ‖AᵀA − BᵀB‖_F (for OV this is
‖PᵀP − W_V W_Vᵀ‖_F), the Gram scale ‖AᵀA‖_F + ‖BᵀB‖_F it is measured against, and the nuclear-vs-Frobenius gap
(‖A‖²+‖B‖²)/2 − ‖ABᵀ‖_* (0 exactly when balanced); with the loss on a fixed held-out batch.

The rank metrics are megarank.analysis's `layer_spectra` + `head_metrics`, the same code as `megarank-rank`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from megarank.analysis.spectra import PRODUCTS, head_factors, head_metrics, layer_spectra
from megarank.experiments.icl.model import AttentionOnly


HEAD_METRICS = ("rank", "rank_atol", "effective_rank", "imbalance", "gram_norm", "l2_half", "nuclear")


@torch.no_grad()
def attention_metrics(model: AttentionOnly, d_head: int, rtol: float, atol: float) -> dict[str, dict[str, np.ndarray]]:
    """product -> metric (HEAD_METRICS) -> (n_layers, n_heads), from megarank's factor-trick spectra;
    gram_norm is ‖AᵀA‖_F + ‖BᵀB‖_F, the scale the imbalance is measured against."""
    out = {p: {m: [] for m in HEAD_METRICS} for p in PRODUCTS}
    for block in model.blocks:
        q, k, v, o = (getattr(block.attn, f"{r}_proj").weight for r in "qkvo")
        spectra = layer_spectra(q, k, v, o, d_head, dtype=torch.float64)
        factors = {"qk": ((q, True), (k, True)), "ov": ((o, False), (v, True))}  # A, B as (weight, rows)
        for product, s in spectra.items():
            metrics = head_metrics(s, rtol=rtol, atol=atol)
            a, b = (head_factors(w, d_head, rows=rows, dtype=torch.float64, device="cpu")
                    for w, rows in factors[product])
            metrics["gram_norm"] = (torch.linalg.matrix_norm(a.mT @ a) + torch.linalg.matrix_norm(b.mT @ b)).numpy()
            for name in HEAD_METRICS:
                out[product][name].append(np.asarray(metrics[name], dtype=float))
    return {p: {m: np.stack(v) for m, v in metrics.items()} for p, metrics in out.items()}


def pooled(m: dict[str, np.ndarray]) -> dict[str, float]:
    """One product's per-head metrics (arrays of any shape) -> the scalars reported for a run.

    Means over heads for the ranks and the absolute gap; the relative imbalance and gap are ratios of sums over
    heads (Σ‖AᵀA − BᵀB‖ / Σ(‖AᵀA‖ + ‖BᵀB‖), Σ gap / Σ (‖A‖²+‖B‖²)/2), so a head decayed to ~0 weighs ~0
    instead of contributing the 0/0 noise of its own ratio."""
    gap = m["l2_half"] - m["nuclear"]
    tiny = np.finfo(float).tiny
    return {"rank_mean": float(m["rank"].mean()), "rank_atol_mean": float(m["rank_atol"].mean()),
            "effective_rank_mean": float(m["effective_rank"].mean()),
            "imbalance": float(m["imbalance"].sum()),
            "imbalance_rel": float(m["imbalance"].sum() / max(m["gram_norm"].sum(), tiny)),
            "gap": float(gap.mean()), "gap_rel": float(gap.sum() / max(m["l2_half"].sum(), tiny))}


@dataclass
class Run:
    """One (optimiser, λ, seed) run: held-out loss and per-head metrics at each recorded step."""

    optimizer: str
    lam: float
    seed: int
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    heads: list[dict[str, dict[str, np.ndarray]]] = field(default_factory=list)  # per record: attention_metrics

    def curve(self, product: str, name: str) -> np.ndarray:
        """(n_records,) one of pooled()'s scalars at each recorded step."""
        return np.array([pooled(h[product])[name] for h in self.heads])

    def final(self, product: str) -> dict[str, float]:
        return pooled(self.heads[-1][product])
