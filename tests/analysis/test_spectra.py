"""The factor trick against the naive SVD of the d_model × d_model product (random, rank-deficient, ill-conditioned
and trained weights; float64 and the mixed-precision path for bf16 weights), and each per-head metric against
its definition on factors whose answer is known in closed form."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from megarank.analysis.readers import AttentionShard, ModelInfo, WeightSource
from megarank.analysis.report import analyse
from megarank.analysis.spectra import (DEFAULT_RTOL, MIXED_TOL, Spectra, cholesky_r, head_metrics, layer_spectra,
                                      product_spectra, r_factor)
from megarank.errors import MegarankError


def naive_sv(m: torch.Tensor, k: int) -> torch.Tensor:
    """The top k singular values of the formed product (what the factor trick must avoid doing)."""
    return torch.linalg.svdvals(m.double())[:k]


def random_attention(d_model: int, n_heads: int, n_kv: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    dh = d_model // n_heads
    q = torch.randn(n_heads * dh, d_model, generator=g, dtype=dtype) * 0.02
    k = torch.randn(n_kv * dh, d_model, generator=g, dtype=dtype) * 0.02
    v = torch.randn(n_kv * dh, d_model, generator=g, dtype=dtype) * 0.02
    o = torch.randn(d_model, n_heads * dh, generator=g, dtype=dtype) * 0.02
    return q, k, v, o


def naive_head_products(q, k, v, o, d_head: int, n_kv: int):
    """Per query head h, the formed W_Q,hᵀ W_K,g and W_O,h W_V,g with g the K/V head serving h."""
    n_q = q.shape[0] // d_head
    group = n_q // n_kv
    for h in range(n_q):
        g = h // group
        rows, kv_rows = slice(h * d_head, (h + 1) * d_head), slice(g * d_head, (g + 1) * d_head)
        yield h, q[rows].double().T @ k[kv_rows].double(), o[:, rows].double() @ v[kv_rows].double()


@pytest.mark.parametrize("rank_deficient", [False, True])
def test_factor_trick_matches_naive_svd_on_random_factors(rank_deficient):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 96, 12, generator=g, dtype=torch.float64)
    b = torch.randn(5, 96, 12, generator=g, dtype=torch.float64)
    if rank_deficient:  # factors of rank 4: the product has only 4 nonzero singular values
        a = a[..., :4] @ torch.randn(5, 4, 12, generator=g, dtype=torch.float64)
    s = product_spectra(a, b)
    for h in range(5):
        m = a[h] @ b[h].T
        full = torch.linalg.svdvals(m)
        torch.testing.assert_close(s.sv[h], full[:12], rtol=1e-10, atol=1e-12 * full[0])
        assert full[12:].max() < 1e-12 * full[0]  # rank <= d_head: nothing is lost beyond the core
        assert s.l2_half[h] == pytest.approx((a[h].square().sum() + b[h].square().sum()).item() / 2, rel=1e-12)
        gram_gap = torch.linalg.matrix_norm(a[h].T @ a[h] - b[h].T @ b[h])
        assert s.imbalance[h] == pytest.approx(gram_gap.item(), rel=1e-10)
    if rank_deficient:
        assert (head_metrics(s)["rank"] == 4).all()


def test_factor_trick_matches_naive_svd_on_trained_weights(reference_run):
    """The trained tiny GPT's own q/k/v/o, every head of every layer."""
    module = torch.load(reference_run / "checkpoints" / "global_step8" / "mp_rank_00_model_states.pt",
                        weights_only=True)["module"]
    d_head = 8  # tests/helpers.TINY: d_model 32, 4 heads
    for layer in range(2):
        q, k, v, o = (module[f"blocks.{layer}.attn.{r}_proj.weight"] for r in "qkvo")
        spectra = layer_spectra(q, k, v, o, d_head)
        for h, qk, ov in naive_head_products(q, k, v, o, d_head, n_kv=4):
            torch.testing.assert_close(spectra["qk"].sv[h], naive_sv(qk, d_head), rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(spectra["ov"].sv[h], naive_sv(ov, d_head), rtol=1e-10, atol=1e-14)


def test_ill_conditioned_factors_keep_their_small_singular_values():
    """CholeskyQR alone would lose σ = 1e-9 of a factor (error ~ eps·κ² ≫ 1); such heads take Householder."""
    g = torch.Generator().manual_seed(2)
    u = torch.linalg.qr(torch.randn(64, 4, generator=g, dtype=torch.float64))[0]
    w = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    sigma = torch.tensor([1.0, 1e-3, 1e-7, 1e-9], dtype=torch.float64)
    well = torch.randn(1, 64, 4, generator=g, dtype=torch.float64)
    factors = torch.cat([(u * sigma @ w.T).unsqueeze(0), well])
    for method in ("cholesky", "householder"):
        r = r_factor(factors, method)
        torch.testing.assert_close(torch.linalg.svdvals(r[0]), sigma, rtol=1e-6, atol=0)
        torch.testing.assert_close(r[1].T @ r[1], well[0].T @ well[0], rtol=1e-12, atol=1e-12)


def test_cholesky_and_householder_agree_on_trained_weights(reference_run):
    module = torch.load(reference_run / "checkpoints" / "global_step8" / "mp_rank_00_model_states.pt",
                        weights_only=True)["module"]
    q, k, v, o = (module[f"blocks.1.attn.{r}_proj.weight"] for r in "qkvo")
    fast, stable = layer_spectra(q, k, v, o, 8), layer_spectra(q, k, v, o, 8, qr="householder")
    for product in ("qk", "ov"):
        torch.testing.assert_close(fast[product].sv, stable[product].sv, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(fast[product].imbalance, stable[product].imbalance, rtol=1e-10, atol=1e-15)


def test_grouped_query_heads_pair_with_their_kv_head():
    q, k, v, o = random_attention(64, n_heads=8, n_kv=2, seed=3)
    spectra = layer_spectra(q, k, v, o, 8)
    for h, qk, ov in naive_head_products(q, k, v, o, 8, n_kv=2):
        torch.testing.assert_close(spectra["qk"].sv[h], naive_sv(qk, 8), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(spectra["ov"].sv[h], naive_sv(ov, 8), rtol=1e-10, atol=1e-14)


def test_float32_arithmetic_agrees_with_float64():
    q, k, v, o = random_attention(64, n_heads=4, n_kv=4, seed=4)
    exact, fast = layer_spectra(q, k, v, o, 16), layer_spectra(q, k, v, o, 16, dtype=torch.float32)
    for product in ("qk", "ov"):
        torch.testing.assert_close(fast[product].sv.double(), exact[product].sv, rtol=1e-4, atol=1e-9)


def balanced_factors(sv: list[float], d_model: int = 40, scale: float = 1.0):
    """A = U diag(√σ)·scale, B = V diag(√σ)/scale: the product U diag(σ) Vᵀ whatever the scale; balanced
    (AᵀA = BᵀB) exactly when scale is 1."""
    g = torch.Generator().manual_seed(5)
    k = len(sv)
    u = torch.linalg.qr(torch.randn(d_model, k, generator=g, dtype=torch.float64))[0]
    w = torch.linalg.qr(torch.randn(d_model, k, generator=g, dtype=torch.float64))[0]
    root = torch.tensor(sv, dtype=torch.float64).sqrt()
    return (u * root * scale).unsqueeze(0), (w * root / scale).unsqueeze(0)


def test_metrics_match_their_definitions():
    sv = [4.0, 2.0, 1.0, 0.03, 0.001, 0.0]
    a, b = balanced_factors(sv)
    m = {name: values[0] for name, values in head_metrics(product_spectra(a, b), rtol=1e-2, atol=0.02).items()}
    s = np.array(sv)
    p = s[s > 0] / s.sum()
    assert m["rank"] == 3  # σ > 1e-2 · 4: 4, 2, 1
    assert m["rank_atol"] == 4  # σ > 0.02: 4, 2, 1, 0.03
    assert m["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert m["stable_rank"] == pytest.approx((s ** 2).sum() / 16, rel=1e-9)
    assert m["sv_max"] == pytest.approx(4.0, rel=1e-12)
    assert m["nuclear"] == pytest.approx(s.sum(), rel=1e-12)
    assert m["l2_half"] == pytest.approx(s.sum(), rel=1e-12)  # ‖A‖² = ‖B‖² = Σσ when balanced
    assert m["balance"] == pytest.approx(1.0, rel=1e-12)
    assert m["imbalance"] == pytest.approx(0.0, abs=1e-12)


def test_rank_counts_strictly_above_rtol_times_sigma_max():
    a, b = balanced_factors([1.0, 0.5, 0.0101, 0.0099])
    assert head_metrics(product_spectra(a, b), rtol=1e-2)["rank"][0] == 3
    assert head_metrics(product_spectra(a, b), rtol=0.6)["rank"][0] == 1


def test_unbalanced_factors_keep_the_product_but_not_the_balance():
    sv, c = [3.0, 1.0, 0.5], 2.0
    a, b = balanced_factors(sv, scale=c)
    m = {name: values[0] for name, values in head_metrics(product_spectra(a, b)).items()}
    assert m["nuclear"] == pytest.approx(4.5, rel=1e-12)
    assert m["l2_half"] == pytest.approx((c ** 2 + c ** -2) / 2 * 4.5, rel=1e-12)
    assert m["balance"] == pytest.approx(2 / (c ** 2 + c ** -2), rel=1e-12)
    # AᵀA − BᵀB = (c² − c⁻²) diag(σ)
    assert m["imbalance"] == pytest.approx((c ** 2 - c ** -2) * math.sqrt(sum(x * x for x in sv)), rel=1e-10)


def test_zero_head_is_rank_zero_with_undefined_balance():
    zeros = torch.zeros(1, 16, 4, dtype=torch.float64)
    m = head_metrics(product_spectra(zeros, zeros))
    assert m["rank"][0] == 0 and m["rank_atol"][0] == 0 and m["effective_rank"][0] == 0
    assert m["stable_rank"][0] == 0 and m["nuclear"][0] == 0 and math.isnan(m["balance"][0])


def test_default_rtol_sees_through_bf16_storage():
    """Rank-8 heads of width 32 saved in bf16: storage rounding fills the spectrum with small singular values,
    which a tight tolerance counts and the default does not."""
    g = torch.Generator().manual_seed(6)
    d_model, dh, r = 256, 32, 8
    q = (torch.randn(dh, r, generator=g) @ torch.randn(r, d_model, generator=g)) * 0.02
    k = (torch.randn(dh, r, generator=g) @ torch.randn(r, d_model, generator=g)) * 0.02
    v, o = torch.randn(dh, d_model, generator=g) * 0.02, torch.randn(d_model, dh, generator=g) * 0.02
    spectra = layer_spectra(q.bfloat16(), k.bfloat16(), v.bfloat16(), o.bfloat16(), dh)
    assert head_metrics(spectra["qk"], rtol=DEFAULT_RTOL)["rank"][0] == r
    assert head_metrics(spectra["qk"], rtol=1e-6)["rank"][0] > r  # the bf16 noise floor is really there
    assert head_metrics(spectra["ov"], rtol=DEFAULT_RTOL)["rank"][0] == dh


def test_heads_that_do_not_fit_the_width_are_rejected():
    q, k, v, o = random_attention(32, n_heads=4, n_kv=4)
    with pytest.raises(ValueError, match="do not split into heads of width 5"):
        layer_spectra(q, k, v, o, 5)
    with pytest.raises(ValueError, match="do not split"):
        layer_spectra(q, k[:16], v, o, 8)


def test_spectra_are_heads_first_float64_on_cpu():
    q, k, v, o = random_attention(32, n_heads=4, n_kv=4)
    s = layer_spectra(q, k, v, o, 8)["qk"]
    assert isinstance(s, Spectra) and s.sv.shape == (4, 8) and s.sv.dtype == torch.float64
    assert (s.sv[:, :-1] >= s.sv[:, 1:]).all()


# Mixed precision: bf16 weights get float32 Grams of their exact products where each head's bound allows
# (megarank/analysis/spectra.py); every σ must stay within MIXED_TOL·σ_max of the naive SVD of the formed product.

def bf16_heads(d_model: int, n_heads: int, d_head: int, seed: int, spectrum=None) -> torch.Tensor:
    """(n_heads·d_head, d_model) bf16 rows; each head's factor has the given singular values (random if None)."""
    g = torch.Generator().manual_seed(seed)
    if spectrum is None:
        return (torch.randn(n_heads * d_head, d_model, generator=g) * 0.02).bfloat16()
    u = torch.linalg.qr(torch.randn(n_heads, d_model, d_head, generator=g, dtype=torch.float64))[0]
    w = torch.linalg.qr(torch.randn(n_heads, d_head, d_head, generator=g, dtype=torch.float64))[0]
    s = torch.as_tensor(spectrum, dtype=torch.float64)
    return (w @ (u * s).mT).reshape(n_heads * d_head, d_model).bfloat16()


def assert_mixed_matches_naive(q, k, v, o, d_head: int, n_kv: int) -> dict:
    spectra = layer_spectra(q, k, v, o, d_head)
    for h, qk, ov in naive_head_products(q, k, v, o, d_head, n_kv=n_kv):
        for product, m in (("qk", qk), ("ov", ov)):
            full = torch.linalg.svdvals(m)
            assert full[d_head:].max() <= 1e-12 * full[0]  # nothing beyond the core
            err = (spectra[product].sv[h] - full[:d_head]).abs().max() / full[0]
            assert err <= MIXED_TOL, (product, h, float(err))
    return spectra


def test_mixed_precision_keeps_well_conditioned_bf16_heads_and_matches_naive_svd():
    d_model, n_heads, d_head = 1536, 4, 64  # d_model spans two accumulation blocks (GRAM_BLOCK), one ragged
    q, k, v = (bf16_heads(d_model, n_heads, d_head, seed) for seed in (10, 11, 12))
    o = bf16_heads(d_model, n_heads, d_head, 13).T.contiguous()
    # head 0 against the naive SVD of its formed 1536² products; every head against the float64 path below
    # (itself checked against the naive SVD above), which keeps the test's SVDs small
    assert_mixed_matches_naive(q[:d_head], k[:d_head], v[:d_head], o[:, :d_head], d_head, n_kv=1)
    spectra = layer_spectra(q, k, v, o, d_head)
    for product in ("qk", "ov"):  # random heads are well conditioned: all on the float32-Gram path
        assert not spectra[product].float64_gram.any()
    exact = layer_spectra(q, k, v, o, d_head, mixed=False)
    for product in ("qk", "ov"):
        assert exact[product].float64_gram is None
        err = (spectra[product].sv - exact[product].sv).abs().amax(1) / exact[product].sv[:, 0]
        assert err.max() <= 1e-6  # far inside the promise in practice
        torch.testing.assert_close(spectra[product].l2_half, exact[product].l2_half, rtol=1e-6, atol=0)
        torch.testing.assert_close(spectra[product].imbalance, exact[product].imbalance, rtol=1e-5, atol=0)


def test_mixed_precision_sends_ill_conditioned_and_rank_deficient_heads_to_float64():
    """Head 0's factor has σ down to 1e-7 (κ = 1e7), head 1's has rank 8 of 64: their float32 Grams cannot
    give 1e-5 of σ_max, so they are redone in float64; heads 2 and 3 are random and stay mixed."""
    d_model, n_heads, d_head = 1024, 4, 64
    ill = torch.logspace(0, -7, d_head)
    deficient = torch.cat([torch.ones(8), torch.zeros(d_head - 8)])
    q = torch.cat([bf16_heads(d_model, 1, d_head, 20, ill), bf16_heads(d_model, 1, d_head, 21, deficient),
                   bf16_heads(d_model, 2, d_head, 22)])
    k, v = bf16_heads(d_model, n_heads, d_head, 23), bf16_heads(d_model, n_heads, d_head, 24)
    o = torch.cat([bf16_heads(d_model, 1, d_head, 25, deficient), bf16_heads(d_model, 3, d_head, 26)]).T.contiguous()
    spectra = assert_mixed_matches_naive(q, k, v, o, d_head, n_kv=n_heads)
    assert spectra["qk"].float64_gram.tolist() == [True, True, False, False]
    assert spectra["ov"].float64_gram.tolist() == [True, False, False, False]
    assert head_metrics(spectra["qk"])["rank"][1] == 8 and head_metrics(spectra["ov"])["rank"][0] == 8


def test_mixed_precision_grouped_query_heads_match_naive_svd():
    d_model, d_head = 1024, 64
    q = bf16_heads(d_model, 8, d_head, 30)
    k = torch.cat([bf16_heads(d_model, 1, d_head, 31, torch.logspace(0, -8, d_head)), bf16_heads(d_model, 1, d_head, 32)])
    v = bf16_heads(d_model, 2, d_head, 33)
    o = bf16_heads(d_model, 8, d_head, 34).T.contiguous()
    spectra = assert_mixed_matches_naive(q, k, v, o, d_head, n_kv=2)
    assert spectra["qk"].float64_gram.tolist() == [True] * 4 + [False] * 4  # K/V head 0 serves query heads 0-3


def test_mixed_precision_on_trained_weights_saved_in_bf16(reference_run):
    """The trained tiny GPT's weights rounded to bf16, every head against the naive SVD of the bf16 product."""
    module = torch.load(reference_run / "checkpoints" / "global_step8" / "mp_rank_00_model_states.pt",
                        weights_only=True)["module"]
    for layer in range(2):
        q, k, v, o = (module[f"blocks.{layer}.attn.{r}_proj.weight"].bfloat16() for r in "qkvo")
        assert_mixed_matches_naive(q, k, v, o, 8, n_kv=4)


def test_mixed_precision_leaves_the_matmul_setting_as_it_was():
    q, k, v, o = (w.bfloat16() for w in random_attention(64, n_heads=4, n_kv=4, seed=7))
    before = torch.backends.mkldnn.matmul.fp32_precision
    layer_spectra(q, k, v, o, 16)
    assert torch.backends.mkldnn.matmul.fp32_precision == before


def matmul_settings() -> dict:
    """Every float32-precision setting torch has (process-wide), and what the legacy getter answers."""
    b = torch.backends
    settings = {name: backend.fp32_precision for name, backend in (
        ("generic", b), ("cuda.matmul", b.cuda.matmul), ("cudnn.conv", b.cudnn.conv), ("cudnn.rnn", b.cudnn.rnn),
        ("mkldnn", b.mkldnn), ("mkldnn.matmul", b.mkldnn.matmul), ("mkldnn.conv", b.mkldnn.conv),
        ("mkldnn.rnn", b.mkldnn.rnn))}
    try:
        settings["legacy"] = torch.get_float32_matmul_precision()
    except RuntimeError:  # torch refuses to answer once the new and legacy APIs disagree
        settings["legacy"] = "raises"
    return settings


@pytest.fixture
def restored_matmul_settings():
    """Whatever a test sets, the next test finds torch's float32 matmul settings as they were."""
    saved = matmul_settings()
    yield
    torch.set_float32_matmul_precision(saved.pop("legacy"))
    b = torch.backends
    for name, value in saved.items():
        backend = b if name == "generic" else getattr(b, name.split(".")[0])
        backend = getattr(backend, name.split(".")[1]) if "." in name else backend
        backend.fp32_precision = value


class _BF16Layers(WeightSource):
    """Three layers of random bf16 attention weights, in memory (the reader's interface, no files)."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at
        self.info = ModelInfo(family="test", n_layers=3, n_heads=2, n_kv_heads=1, d_model=1024, d_head=64,
                              source="memory", format="test")

    def layers(self):
        for layer in range(self.info.n_layers):
            q, k, v, o = (bf16_heads(1024, n, 64, seed=10 * layer + i) for i, n in enumerate((2, 1, 1, 2)))
            o = o.T.contiguous()
            shard = AttentionShard(layer=layer, first_head=0, q=q, k=k, v=v, o=o)
            yield [shard if layer != self.fail_at else dataclasses.replace(shard, k=k[:1])]


@pytest.mark.parametrize("setting", ["untouched", "tf32", "legacy-high"])
def test_an_analysis_leaves_every_matmul_setting_as_it_found_it(setting, restored_matmul_settings):
    """analyse() on bf16 weights (the mixed path, which sets oneDNN's float32 matmuls to bf16 while its worker
    threads form Grams) finds torch's settings untouched, set through the new API or through the legacy one, and
    leaves every one as it found it, also when a layer fails half-way."""
    if setting == "tf32":
        torch.backends.mkldnn.matmul.fp32_precision = "tf32"
    elif setting == "legacy-high":
        torch.set_float32_matmul_precision("high")
    before = matmul_settings()
    table = analyse(_BF16Layers(), rtol=DEFAULT_RTOL, atol=0.0, workers=2, progress=False)
    assert table.settings["float64_gram_products"] == 0  # every head went through the bf16 Grams
    assert matmul_settings() == before
    with pytest.raises(MegarankError, match="layer 1"):
        analyse(_BF16Layers(fail_at=1), rtol=DEFAULT_RTOL, atol=0.0, workers=2, progress=False)
    assert matmul_settings() == before


def test_cheap_condition_bound_agrees_with_the_gram_eigenvalues():
    """cholesky_r's triangular-inverse bound decides like the Gram's eigenvalues: ill-conditioned heads
    (κ = 1e6, 1e9) go to Householder, κ = 1e4 and random heads do not."""
    g = torch.Generator().manual_seed(8)
    u = torch.linalg.qr(torch.randn(4, 200, 16, generator=g, dtype=torch.float64))[0]
    kappas = [1.0, 1e4, 1e6, 1e9]
    sigma = torch.stack([torch.logspace(0, -math.log10(c), 16, dtype=torch.float64) for c in kappas])
    factors = u * sigma.unsqueeze(1)
    _, redo = cholesky_r(factors.mT @ factors)
    assert redo.tolist() == [2, 3]
