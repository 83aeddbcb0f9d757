"""Per-head rank metrics of the attention products, computed from their factors (docs/paper.md,
"Per-head products and how megarank measures them").

The factor trick. A product M = A Bᵀ of two (d_model, k) factors has rank <= k. With thin QR A = Q_A R_A and
B = Q_B R_B, M = Q_A (R_A R_Bᵀ) Q_Bᵀ where Q_A, Q_B have orthonormal columns, so M has exactly the singular
values of the k × k core R_A R_Bᵀ: two O(d_model k²) QRs and an O(k³) SVD replace the O(d_model³) SVD of M,
and M itself is never formed. The R factors also give everything else without touching d_model again:
AᵀA = R_AᵀR_A, so ‖A‖_F = ‖R_A‖_F and ‖AᵀA − BᵀB‖_F = ‖R_AᵀR_A − R_BᵀR_B‖_F.

Per head h, with the weights in nn.Linear's (out, in) layout (megarank/models/attention.py):
    qk: A = W_Q,hᵀ, B = W_K,hᵀ    M = W_Q,hᵀ W_K,h   (the paper's W_Kᵀ W_Q up to a transpose: same spectrum)
    ov: A = W_O,h,  B = W_V,hᵀ    M = W_O,h W_V,h
Grouped-query attention: query head h reads K/V head h // (n_heads / n_kv_heads); that K/V head's QR is done
once and paired with each of its query heads.

How R is computed (`qr`):
    'cholesky' (default): CholeskyQR, R = chol(AᵀA)ᵀ, which is the thin QR's R (up to row signs) from one Gram
        matrix (a GEMM, the fastest dense kernel there is) and a k × k Cholesky: faster per layer than
        Householder, which matters for a 7B model's thousands of heads. Forming AᵀA squares
        the condition number, so the smallest singular values of A come out with relative error ~ eps·κ(A)².
        Heads whose factor has κ(A) > eps^(-1/3) (1.6e5 in float64, read off the Gram's eigenvalues) are
        redone with Householder; every other head's factor keeps its σ to relative accuracy eps^(1/3) (6e-6
        in float64) or better — far better for the well-conditioned heads that are the rule.
    'householder': LAPACK's Householder QR for every head (backward stable at any conditioning: absolute
        error ~ eps·σ_max).
The arithmetic runs in float64 by default: weights stored in bf16 are exact in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# A singular value counts towards `rank` when it exceeds DEFAULT_RTOL × the largest. bf16 keeps 8 significant
# bits, so storing a weight moves it by up to 2⁻⁹ ≈ 0.2 % of its value; that perturbs the product's singular
# values by roughly the same fraction of σ_max (more where a head's spectrum is flat), which reads as a noise
# floor of spurious directions near 1e-3·σ_max. 1e-2 sits safely above that floor: a direction counts when it
# carries at least 1 % of the head's strongest one, whether the weights were saved in fp32 or bf16.
DEFAULT_RTOL = 1e-2
# `rank_atol` counts singular values above this absolute value. Weight decay shrinks singular values by a
# roughly fixed amount per unit of λ (docs/paper.md, "The claim"), so an absolute threshold sees directions
# decayed to ~zero even where the head's top direction is small too; it is scale-dependent: compare it between
# runs of one model family and init. 1e-3 is ~1/100 of a GPT-2-small head's σ_max at init (init_std 0.02, d_model 768).
DEFAULT_ATOL = 1e-3

PRODUCTS = ("qk", "ov")
METRICS = ("rank", "rank_atol", "effective_rank", "stable_rank", "sv_max", "nuclear", "l2_half", "balance",
           "imbalance")


@dataclass(frozen=True)
class Spectra:
    """One product for a run of heads: the factor trick's raw results (CPU float64, heads first)."""

    sv: torch.Tensor  # (H, k) singular values of M, descending
    l2_half: torch.Tensor  # (H,) (‖A‖_F² + ‖B‖_F²) / 2
    imbalance: torch.Tensor  # (H,) ‖AᵀA − BᵀB‖_F


QR_METHODS = ("cholesky", "householder")


def r_factor(factors: torch.Tensor, qr: str = "cholesky") -> torch.Tensor:
    """(H, d_model, k) -> (H, k, k): the R of each head's thin QR (A = QR, Q never formed); see the module
    docstring for the two methods."""
    if qr == "householder":
        return torch.linalg.qr(factors, mode="r")[1]
    if qr != "cholesky":
        raise ValueError(f"qr must be one of {QR_METHODS}, got '{qr}'")
    gram = factors.mT @ factors  # (H, k, k) = AᵀA = RᵀR
    lower, info = torch.linalg.cholesky_ex(gram)
    r = lower.mT
    eig = torch.linalg.eigvalsh(gram)  # ascending; κ(A)² = λ_max / λ_min
    eps = torch.finfo(factors.dtype).eps
    well_conditioned = (info == 0) & (eig[:, 0] > eps ** (2 / 3) * eig[:, -1])
    if not well_conditioned.all():
        redo = (~well_conditioned).nonzero().squeeze(1)
        r[redo] = torch.linalg.qr(factors[redo], mode="r")[1]
    return r


def core_spectra(r_a: torch.Tensor, r_b: torch.Tensor) -> Spectra:
    """Spectra of M_h = A_h B_hᵀ from the R factors of A_h and B_h, both (H, k, k)."""
    sv = torch.linalg.svdvals(r_a @ r_b.transpose(-1, -2))  # (H, k), descending
    gram_a = r_a.transpose(-1, -2) @ r_a  # = A_hᵀ A_h
    gram_b = r_b.transpose(-1, -2) @ r_b
    l2_half = (r_a.square().sum((-2, -1)) + r_b.square().sum((-2, -1))) / 2
    imbalance = torch.linalg.matrix_norm(gram_a - gram_b)  # Frobenius
    return Spectra(sv=sv.cpu(), l2_half=l2_half.cpu(), imbalance=imbalance.cpu())


def product_spectra(a: torch.Tensor, b: torch.Tensor, qr: str = "cholesky") -> Spectra:
    """Spectra of A_h B_hᵀ for factors a, b of shape (H, d_model, k), in their own dtype and device."""
    return core_spectra(r_factor(a, qr), r_factor(b, qr))


def head_factors(weight: torch.Tensor, d_head: int, *, rows: bool, dtype: torch.dtype,
                 device: torch.device | str) -> torch.Tensor:
    """A projection's per-head factors as (H, d_model, d_head), converted to dtype on device.

    rows=True: the weight of role q, k or v (H·d_head, d_model), head h in rows [h·d_head, (h+1)·d_head)
        -> W_{·,h}ᵀ.
    rows=False: the weight of role o (d_model, H·d_head), head h in those columns -> W_O,h."""
    w = weight.detach().to(device=device, dtype=dtype)
    if rows:
        return w.view(-1, d_head, w.shape[1]).transpose(1, 2)  # (H, d_head, d_model) -> (H, d_model, d_head)
    return w.view(w.shape[0], -1, d_head).permute(1, 0, 2)  # (d_model, H, d_head) -> (H, d_model, d_head)


def layer_spectra(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, d_head: int, *,
                  dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                  qr: str = "cholesky") -> dict[str, Spectra]:
    """{'qk': ..., 'ov': ...} over the query heads of one layer (or one TP shard of it).

    q (n_q·d_head, d_model), k and v (n_kv·d_head, d_model), o (d_model, n_q·d_head): nn.Linear layout, any
    dtype. The projections are converted and factorised a few heads at a time."""
    n_q, n_kv = q.shape[0] // d_head, k.shape[0] // d_head
    if (q.shape[0] % d_head or k.shape != v.shape or k.shape[0] % d_head or n_kv == 0 or n_q % n_kv
            or o.shape != (q.shape[1], q.shape[0]) or k.shape[1] != q.shape[1]):
        raise ValueError(f"attention shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"o {tuple(o.shape)} do not split into heads of width {d_head}")
    group = n_q // n_kv
    # a few heads at a time: each float64 copy stays small (<= ~16 MB), so the allocator reuses its memory
    # instead of mapping fresh pages for every projection (page faults cost more than the conversion itself)
    chunk = max(1, (16 << 20) // (q.shape[1] * d_head * torch.finfo(dtype).bits // 8))

    def r_of(weight: torch.Tensor, rows: bool) -> torch.Tensor:
        n = weight.shape[0 if rows else 1] // d_head
        parts = []
        for h in range(0, n, chunk):
            heads = slice(h * d_head, min(h + chunk, n) * d_head)
            part = weight[heads] if rows else weight[:, heads]
            parts.append(r_factor(head_factors(part, d_head, rows=rows, dtype=dtype, device=device), qr))
        return torch.cat(parts)

    r_q, r_k, r_v, r_o = r_of(q, True), r_of(k, True), r_of(v, True), r_of(o, False)
    r_k, r_v = r_k.repeat_interleave(group, dim=0), r_v.repeat_interleave(group, dim=0)  # K/V head per query head
    return {"qk": core_spectra(r_q, r_k), "ov": core_spectra(r_o, r_v)}


def head_metrics(s: Spectra, *, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> dict[str, np.ndarray]:
    """The per-head scalars of METRICS, each an array over the heads of `s`.

    rank: #σ > rtol·σ_max; rank_atol: #σ > atol; effective_rank: exp(−Σ p log p), p = σ/Σσ (Roy & Vetterli
    2007); stable_rank: Σσ²/σ_max²; nuclear: Σσ = ‖M‖_*; balance: nuclear / l2_half, which is <= 1 (AM-GM on
    ‖M‖_* <= ‖A‖_F‖B‖_F) with equality exactly when the factors are balanced. A head whose product is zero has
    rank 0, effective and stable rank 0, and balance NaN when its factors are zero too."""
    sv = s.sv.double()
    sv_max = sv[:, 0]
    nuclear = sv.sum(1)
    p = sv / nuclear.clamp_min(torch.finfo(sv.dtype).tiny).unsqueeze(1)
    entropy = -(p * p.clamp_min(torch.finfo(sv.dtype).tiny).log()).sum(1)
    nonzero = sv_max > 0
    effective = torch.where(nonzero, entropy.exp(), torch.zeros_like(entropy))
    stable = torch.where(nonzero, sv.square().sum(1) / sv_max.square().clamp_min(torch.finfo(sv.dtype).tiny),
                         torch.zeros_like(sv_max))
    l2_half = s.l2_half.double()
    balance = torch.where(l2_half > 0, nuclear / l2_half.clamp_min(torch.finfo(sv.dtype).tiny),
                          torch.full_like(l2_half, math.nan))
    out = {
        "rank": (sv > rtol * sv_max.unsqueeze(1)).sum(1),
        "rank_atol": (sv > atol).sum(1),
        "effective_rank": effective,
        "stable_rank": stable,
        "sv_max": sv_max,
        "nuclear": nuclear,
        "l2_half": l2_half,
        "balance": balance,
        "imbalance": s.imbalance.double(),
    }
    return {name: out[name].numpy() for name in METRICS}
