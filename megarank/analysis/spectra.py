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
        Heads whose factor has κ(A) > eps^(-1/3) (1.6e5 in float64) are redone with Householder; every other
        head's factor keeps its σ to relative accuracy eps^(1/3) (6e-6 in float64) or better — far better for
        the well-conditioned heads that are the rule. κ is bounded first by ‖R‖_F‖R⁻¹‖_F (a triangular
        inverse, cheap); only heads that bound does not clear get the exact κ from the Gram's eigenvalues.
    'householder': LAPACK's Householder QR for every head (backward stable at any conditioning: absolute
        error ~ eps·σ_max).
The arithmetic runs in float64 by default: weights stored in bf16 are exact in float64.

Mixed precision (`mixed`, default on; bf16 weights, float64 arithmetic on CPU, 'cholesky' only). A bf16 weight
is exact in float32 and the product of two bf16 numbers is exact in float32, so a float32 GEMM (run by oneDNN
on bf16 hardware where the CPU has it) forms each Gram with float32 accumulation as its only error. It is
accumulated over d_model in blocks of GRAM_BLOCK, the blocks summed in float64, which keeps the Gram's
relative error (2-norm) at GRAM32_ERROR or below whatever d_model is. Each product head's σ then moves by at
most δ/σ̃_i with δ = 2·GRAM32_ERROR·‖AᵀA‖₂‖BᵀB‖₂ (Weyl, to first order: σ² are the eigenvalues of
AᵀA·BᵀB), so a head is kept when δ / (σ̃_max σ̃_min) <= MIXED_TOL, i.e. every σ within MIXED_TOL·σ_max;
every other head (ill-conditioned, rank-deficient, zero) has its Grams redone in float64 as above. Per layer
and projection one head's float32 Gram is also checked against its float64 one, and a projection whose
sample exceeds GRAM32_ERROR is done in float64 throughout (a BLAS that accumulates worse than assumed). The
‖·‖₂ are power-iteration estimates. l2_half and imbalance of the kept heads carry the Gram's error, relative
to ‖AᵀA‖ + ‖BᵀB‖.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
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
    float64_gram: torch.Tensor | None = None  # (H,) bool: done in float64 throughout (mixed precision only)


QR_METHODS = ("cholesky", "householder")
# Mixed precision (module docstring). GRAM_BLOCK: the float32 accumulation length; its error grows with the
# block (measured: halving the block halves it), so the block, not d_model, sets GRAM32_ERROR. GRAM32_ERROR:
# the assumed bound on ‖G̃ − G‖₂/‖G‖₂ for those Grams, 16 units of float32 roundoff (2⁻²⁴); the measured error
# on random bf16 heads is several times smaller (docs/rank-analysis.md, "Speed"). MIXED_TOL: the accuracy
# promised to every σ of a head kept on that path, as a fraction of the head's σ_max.
GRAM_BLOCK = 1024
GRAM32_ERROR = 16 * 2.0 ** -24
MIXED_TOL = 1e-5
_POWER_STEPS = 8
# each converted block of weights stays small (<= ~16 MB), so the allocator reuses its memory instead of
# mapping fresh pages for every projection (page faults cost more than the conversion itself)
_BLOCK_BYTES = 16 << 20


def r_factor(factors: torch.Tensor, qr: str = "cholesky") -> torch.Tensor:
    """(H, d_model, k) -> (H, k, k): the R of each head's thin QR (A = QR, Q never formed); see the module
    docstring for the two methods."""
    if qr == "householder":
        return torch.linalg.qr(factors, mode="r")[1]
    if qr != "cholesky":
        raise ValueError(f"qr must be one of {QR_METHODS}, got '{qr}'")
    gram = factors.mT @ factors  # (H, k, k) = AᵀA = RᵀR
    r, redo = cholesky_r(gram)
    if redo.numel():
        r[redo] = torch.linalg.qr(factors[redo], mode="r")[1]
    return r


def cholesky_r(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R = chol(G)ᵀ for each head's Gram G = AᵀA (H, k, k), and the indices of the heads that need
    Householder instead: the Cholesky failed, or κ(A) > eps^(-1/3)."""
    lower, info = torch.linalg.cholesky_ex(gram)
    r = lower.mT
    eps = torch.finfo(gram.dtype).eps
    limit = eps ** (-1 / 3)
    ok = info == 0
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    inverse = torch.linalg.solve_triangular(torch.where(ok[:, None, None], r, eye), eye, upper=True)
    bound = torch.linalg.matrix_norm(r) * torch.linalg.matrix_norm(inverse)  # ‖R‖_F‖R⁻¹‖_F >= κ₂(R) = κ(A)
    unsure = (ok & ~(bound <= limit)).nonzero().squeeze(1)  # `~(<=)`: NaN bounds are unsure too
    if unsure.numel():  # the exact κ(A)² = λ_max / λ_min of the Gram, for the heads the bound did not clear
        eig = torch.linalg.eigvalsh(gram[unsure])  # ascending
        ok[unsure] = eig[:, 0] > eps ** (2 / 3) * eig[:, -1]
    return r, (~ok).nonzero().squeeze(1)


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


def _head_rows(weight: torch.Tensor, d_head: int, rows: bool) -> torch.Tensor:
    """The weight as (H, d_head, d_model), a view: head h's factor is [h]ᵀ (no copy, any dtype)."""
    w = weight.detach() if rows else weight.detach().T  # o: (d_model, H·d_head) -> (H·d_head, d_model)
    return w.view(-1, d_head, w.shape[1])


_bf16_lock = threading.Lock()
_bf16_users = 0
_bf16_saved = ""


@contextmanager
def _exact_bf16_matmul():
    """float32 matmuls through oneDNN's bf16 path (AMX/AVX-512-BF16 where present) while inside; only for
    operands that are exact in bf16, where it changes nothing but the speed.

    torch keeps the setting (torch.backends.mkldnn.matmul.fp32_precision) per process, not per thread, and has
    no CPU matmul taking bf16 operands to a float32 result, so it is set for as short as this block and
    restored: the analysis's worker threads share it (the first in sets it, the last out puts back the value
    found on entry, unless something else changed it meanwhile, whose value is then kept). While inside, other
    threads' float32 CPU matmuls take the bf16 path too, and the legacy torch.get_float32_matmul_precision()
    raises (mixed APIs); megarank runs nothing beside an analysis (live analysis runs between training steps)."""
    global _bf16_users, _bf16_saved
    with _bf16_lock:
        if _bf16_users == 0:
            _bf16_saved = torch.backends.mkldnn.matmul.fp32_precision
            torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        _bf16_users += 1
    try:
        yield
    finally:
        with _bf16_lock:
            _bf16_users -= 1
            if _bf16_users == 0 and torch.backends.mkldnn.matmul.fp32_precision == "bf16":
                torch.backends.mkldnn.matmul.fp32_precision = _bf16_saved


def bf16_grams(weight: torch.Tensor, d_head: int, *, rows: bool) -> tuple[torch.Tensor, bool]:
    """Every head's Gram AᵀA of a bf16 projection (H, d_head, d_head) in float64, from float32 GEMMs of the
    exact products accumulated over blocks of GRAM_BLOCK (module docstring), and whether the sampled head's
    error stayed within GRAM32_ERROR (if not, use these Grams for nothing).

    Each block of d_model is converted to float32 contiguously (a 16 MB buffer): for q/k/v the block is a
    column range, one GEMM per head batched; for o it is a row range, one GEMM per head on its columns."""
    w = weight.detach()
    d_model = w.shape[1] if rows else w.shape[0]
    n = (w.shape[0] if rows else w.shape[1]) // d_head
    grams = torch.zeros(n, d_head, d_head, dtype=torch.float64)
    storage = torch.empty(min(GRAM_BLOCK, d_model) * n * d_head)
    with _exact_bf16_matmul():
        for start in range(0, d_model, GRAM_BLOCK):
            width = min(GRAM_BLOCK, d_model - start)
            if rows:  # (H·d_head, block) -> (H, d_head, block): head h's factor, transposed
                block = storage[:n * d_head * width].view(n, d_head, width)
                block.copy_(w[:, start:start + width].view(n, d_head, width))
                grams += block @ block.mT
            else:  # (block, H·d_head): head h's factor in columns [h·d_head, (h+1)·d_head)
                block = storage[:width * n * d_head].view(width, n * d_head)
                block.copy_(w[start:start + width])
                for h in range(n):
                    part = block[:, h * d_head:(h + 1) * d_head]
                    grams[h] += part.T @ part
    sample = (w[:d_head] if rows else w[:, :d_head].T).double()  # head 0, (d_head, d_model)
    exact = sample @ sample.T
    error = torch.linalg.eigvalsh(grams[0] - exact).abs().max()  # ‖G̃ − G‖₂ of a symmetric difference
    return grams, bool(error <= GRAM32_ERROR * _top_eigenvalue(exact[None])[0])


def _top_eigenvalue(gram: torch.Tensor) -> torch.Tensor:
    """(H, k, k) PSD -> (H,) an estimate of λ_max (power iteration from a fixed start; at most λ_max)."""
    g = torch.Generator().manual_seed(0)
    v = torch.rand(gram.shape[0], gram.shape[-1], 1, generator=g, dtype=gram.dtype) + 0.5
    for _ in range(_POWER_STEPS):
        v = gram @ v
        v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(gram.dtype).tiny)
    return (v.mT @ gram @ v).flatten()


def _exact_r(weight: torch.Tensor, d_head: int, *, rows: bool, heads: torch.Tensor | None, dtype: torch.dtype,
             device: torch.device | str, qr: str) -> torch.Tensor:
    """R of the given heads (all when None) of one projection, converted to dtype a few heads at a time."""
    view = _head_rows(weight, d_head, rows)  # (H, d_head, d_model)
    if heads is not None:
        view = view[heads.to(view.device)]
    chunk = max(1, _BLOCK_BYTES // (view.shape[2] * d_head * torch.finfo(dtype).bits // 8))
    parts = [r_factor(view[i:i + chunk].to(device=device, dtype=dtype).mT, qr) for i in range(0, view.shape[0], chunk)]
    return torch.cat(parts) if parts else torch.empty(0, d_head, d_head, dtype=dtype, device=device)


def _mixed_spectra(weights: dict[str, torch.Tensor], d_head: int, group: int, qr: str) -> dict[str, Spectra] | None:
    """layer_spectra's mixed-precision path (module docstring), or None when a sampled Gram fails its check."""
    grams = {}
    for role, w in weights.items():
        grams[role], ok = bf16_grams(w, d_head, rows=role != "o")
        if not ok:
            return None
    out = {}
    for product, (a, b) in {"qk": ("q", "k"), "ov": ("o", "v")}.items():
        r_a, bad_a = cholesky_r(grams[a])
        r_b, bad_b = cholesky_r(grams[b])
        owner = torch.arange(r_a.shape[0]) // group  # the K/V head each query head reads
        g_a, g_b = grams[a], grams[b][owner]
        sv = torch.linalg.svdvals(r_a @ r_b[owner].mT)  # (H, k), descending
        s = Spectra(sv=sv, l2_half=(g_a.diagonal(0, -2, -1).sum(-1) + g_b.diagonal(0, -2, -1).sum(-1)) / 2,
                    imbalance=torch.linalg.matrix_norm(g_a - g_b))
        lam = _top_eigenvalue(grams[a]) * _top_eigenvalue(grams[b])[owner]
        sv_min, sv_max = sv[:, -1], sv[:, 0]
        bound = 2 * GRAM32_ERROR * lam / (sv_max * sv_min)
        keep = bound <= MIXED_TOL  # False for NaN and for zero σ_min
        keep[bad_a] = False
        keep[torch.isin(owner, bad_b)] = False
        redo = (~keep).nonzero().squeeze(1)
        exact = torch.zeros_like(keep)
        if redo.numel():
            kv = owner[redo].unique()
            r_a_redo = _exact_r(weights[a], d_head, rows=a != "o", heads=redo, dtype=torch.float64, device="cpu",
                                qr=qr)
            r_b_kv = _exact_r(weights[b], d_head, rows=True, heads=kv, dtype=torch.float64, device="cpu", qr=qr)
            r_b_redo = r_b_kv[torch.searchsorted(kv, owner[redo])]
            fixed = core_spectra(r_a_redo, r_b_redo)
            s.sv[redo], s.l2_half[redo], s.imbalance[redo] = fixed.sv, fixed.l2_half, fixed.imbalance
            exact[redo] = True
        out[product] = Spectra(sv=s.sv, l2_half=s.l2_half, imbalance=s.imbalance, float64_gram=exact)
    return out


def layer_spectra(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, d_head: int, *,
                  dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                  qr: str = "cholesky", mixed: bool = True) -> dict[str, Spectra]:
    """{'qk': ..., 'ov': ...} over the query heads of one layer (or one TP shard of it).

    q (n_q·d_head, d_model), k and v (n_kv·d_head, d_model), o (d_model, n_q·d_head): nn.Linear layout, any
    dtype. The projections are converted and factorised a few heads at a time. mixed: float32 Grams for the
    heads whose bound allows it, when the weights are bf16 and the arithmetic float64 on CPU with 'cholesky'
    (module docstring); each Spectra's float64_gram says which heads were done in float64 throughout."""
    n_q, n_kv = q.shape[0] // d_head, k.shape[0] // d_head
    if (q.shape[0] % d_head or k.shape != v.shape or k.shape[0] % d_head or n_kv == 0 or n_q % n_kv
            or o.shape != (q.shape[1], q.shape[0]) or k.shape[1] != q.shape[1]):
        raise ValueError(f"attention shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"o {tuple(o.shape)} do not split into heads of width {d_head}")
    if qr not in QR_METHODS:
        raise ValueError(f"qr must be one of {QR_METHODS}, got '{qr}'")
    group = n_q // n_kv
    weights = {"q": q, "k": k, "v": v, "o": o}
    if (mixed and qr == "cholesky" and dtype == torch.float64 and torch.device(device).type == "cpu"
            and all(w.dtype == torch.bfloat16 and w.device.type == "cpu" for w in weights.values())):
        spectra = _mixed_spectra(weights, d_head, group, qr)
        if spectra is not None:
            return spectra
    r = {role: _exact_r(w, d_head, rows=role != "o", heads=None, dtype=dtype, device=device, qr=qr)
         for role, w in weights.items()}
    r_k, r_v = r["k"].repeat_interleave(group, dim=0), r["v"].repeat_interleave(group, dim=0)  # K/V head per query head
    return {"qk": core_spectra(r["q"], r_k), "ov": core_spectra(r["o"], r_v)}


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
