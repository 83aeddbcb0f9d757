"""Fig 1: two 5×5 factors under L2 against the nuclear norm on their product.

The paper's toy problem: gradient descent on

    L_L2(A, B) = ‖ABᵀ − D‖² + (λ/2)(‖A‖² + ‖B‖²),    D = diag(0.2, 0.4, 0.6, 0.8, 1),

beside the same loss on W directly with the nuclear norm, L_*(W) = ‖W − D‖² + λ‖W‖_*, solved by proximal
gradient. What the theory says, and what is measured against it here:

- Balancing. With G = ∇_W‖W − D‖² = 2(ABᵀ − D), gradient flow gives d/dt AᵀA = −AᵀGB − BᵀGᵀA − 2λAᵀA and the
  same cross terms for BᵀB, so d/dt (AᵀA − BᵀB) = −2λ (AᵀA − BᵀB): the imbalance decays at rate 2λ in flow
  time, 2·lr·λ per gradient step (the O(lr²) terms of a discrete step raise it by a factor ≈ 1 + lr·λ).
- Once AᵀA = BᵀB, A = U S Rᵀ and B = V S Rᵀ share S, so (‖A‖² + ‖B‖²)/2 = tr S² = ‖ABᵀ‖_*: the gap between
  the two regularisers closes and L_L2(A, B) = L_*(ABᵀ).
- The minimiser of L_*. L_*(W) = 2·[½‖W − D‖² + (λ/2)‖W‖_*], whose minimiser is the proximal map of the
  nuclear norm at D: singular-value soft-thresholding, σ_i(W*) = max(σ_i(D) − λ/2, 0) (the λ/2 because the
  loss has no ½). The singular values fall linearly in λ and vanish at λ = 2σ_i(D).
- Near λ = 2σ_i(D) the vanishing mode loses its linear restoring force: with a = b on that mode,
  ds/dt = −4s², so s = s₀/(1 + 4·s₀·lr·t) <= 1/(4·lr·t) after t steps (0.005 at lr 0.05 and 1000 steps)
  instead of an exponential.

Everything is float64 numpy; a run is a fraction of a second per λ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # no display; as megarank/analysis/plots.py

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure as MplFigure

from megarank.errors import MegarankError
from megarank.experiments.report import Check, Figure, Result, Table

TITLE = "Fig 1: L2 on two 5×5 factors vs the nuclear norm on their product"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise MegarankError(message)


@dataclass
class Config:
    """The toy problem of the paper's Fig 1: gradient descent on the factors, proximal gradient on W."""

    diag: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0])
    """The diagonal of the target D (the paper's diag(0.2, 0.4, 0.6, 0.8, 1)); A, B and W are n × n with n its
    length."""
    lambdas: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(23)])
    """The regularisation strengths λ, one run of each problem per value; 0 gives the unregularised run (no
    balancing). Values at λ = 2σ_i(D) are where a singular value just vanishes (slowest convergence)."""
    trace_lambda: float = 0.4
    """The λ whose singular values are plotted over training (the paper shows 0.4); must be in lambdas."""
    steps: int = 1000
    """Gradient steps of each run (the paper's t up to 1000)."""
    lr: float = 0.05
    """Step size of both gradient descent on (A, B) and proximal gradient on W. Chosen from the theory:
    2·lr·λ·steps = 40 e-folds of balancing at λ = 0.4; the flow time lr·steps = 50 lets the slowest linear mode
    (rate 4·|2σ_i − λ| ≥ 0.4 on the default grid away from λ = 2σ_i) converge; lr·(curvature ≈ 8σ_max + λ)
    stays well below 2, so gradient descent is stable."""
    init_std: float = 0.5
    """A and B start with i.i.d. N(0, init_std²) entries (W starts at their product), so the initial imbalance
    ‖AᵀA − BᵀB‖ is of order n·init_std² and the product has no structure of D."""
    seed: int = 0
    """Seed of the initial A and B (the same start for every λ)."""
    fit_floor: float = 1e-10
    """The decay rate of ‖AᵀA − BᵀB‖ is fitted on its log-linear part: from step 0 until it first falls below
    fit_floor × its initial value (below that, float64 rounding noise of ~1e-16 × ‖A‖² takes over)."""
    rate_rtol: float = 0.15
    """The measured rate passes when within this relative distance of 2·lr·λ, for every λ > 0 (the discrete
    step's own bias is ≈ lr·λ, 0.11 at λ = 2.2 and lr 0.05)."""
    sv_atol: float = 0.01
    """Final singular values of ABᵀ must match the soft-thresholding closed form within this, for every λ."""
    prox_atol: float = 1e-8
    """Final singular values of the proximal-gradient W must match the closed form within this."""
    gap_atol: float = 1e-6
    """(‖A‖² + ‖B‖²)/2 − ‖ABᵀ‖_* at the end must be below this for every λ > 0."""
    objective_atol: float = 1e-4
    """The final L2 objective of (A, B) must equal the minimum of the nuclear objective within this."""
    out_dir: str = "runs/paper/factorized"
    """Where report.md, the PNGs, CSVs and summary.json go."""

    def __post_init__(self) -> None:
        _require(len(self.diag) >= 1, "diag is empty; give D's diagonal, e.g. diag=[0.2,0.4,0.6,0.8,1.0]")
        _require(len(self.lambdas) >= 1, "lambdas is empty; give at least one λ, e.g. lambdas=[0,0.4]")
        _require(all(lam >= 0 for lam in self.lambdas), f"lambdas must be >= 0, got {list(self.lambdas)}")
        _require(any(abs(lam - self.trace_lambda) < 1e-12 for lam in self.lambdas),
                 f"trace_lambda={self.trace_lambda} is not in lambdas; add it there or pick one of them")
        _require(self.steps >= 10, f"steps must be >= 10 to fit a rate, got {self.steps}")
        _require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _require(self.init_std > 0, f"init_std must be > 0 (zero factors never move), got {self.init_std}")
        _require(0 < self.fit_floor < 1, f"fit_floor must be in (0, 1), e.g. 1e-10, got {self.fit_floor}")
        for name in ("rate_rtol", "sv_atol", "prox_atol", "gap_atol", "objective_atol"):
            _require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")


# ---- the closed forms ---------------------------------------------------------------------------------------

def soft_threshold(sigma: np.ndarray, tau: float) -> np.ndarray:
    """max(σ − τ, 0), elementwise."""
    return np.maximum(np.asarray(sigma, dtype=np.float64) - tau, 0.0)


def nuclear_minimiser_sv(target: np.ndarray, lam: float) -> np.ndarray:
    """Singular values (descending) of argmin_W ‖W − D‖² + λ‖W‖_*: soft-threshold(σ(D), λ/2)."""
    return soft_threshold(np.linalg.svd(target, compute_uv=False), lam / 2)


def svt(matrix: np.ndarray, tau: float) -> np.ndarray:
    """Proximal map of τ‖·‖_*: shrink every singular value by τ (singular-value thresholding)."""
    u, s, vt = np.linalg.svd(matrix)
    return (u * soft_threshold(s, tau)) @ vt


def nuclear(matrix: np.ndarray) -> float:
    return float(np.linalg.svd(matrix, compute_uv=False).sum())


# ---- the two runs -------------------------------------------------------------------------------------------

@dataclass
class FactorRun:
    """Per-step traces of gradient descent on (A, B) at one λ (index t = after t steps, t = 0..steps)."""

    lam: float
    imbalance: np.ndarray  # ‖AᵀA − BᵀB‖_F
    gap: np.ndarray  # (‖A‖² + ‖B‖²)/2 − ‖ABᵀ‖_*, >= 0 up to rounding
    sv: np.ndarray  # (steps + 1, n) singular values of ABᵀ, descending
    objective: float  # final L_L2(A, B)


@dataclass
class ProxRun:
    """Per-step singular values of W under proximal gradient on ‖W − D‖² + λ‖W‖_*, and its final objective."""

    lam: float
    sv: np.ndarray  # (steps + 1, n)
    objective: float


def initial_factors(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    n = len(cfg.diag)
    rng = np.random.default_rng(cfg.seed)
    return rng.normal(0.0, cfg.init_std, (n, n)), rng.normal(0.0, cfg.init_std, (n, n))


def train_factors(cfg: Config, target: np.ndarray, lam: float) -> FactorRun:
    a, b = initial_factors(cfg)
    imbalance, gap, sv = [], [], []
    for step in range(cfg.steps + 1):
        w = a @ b.T
        s = np.linalg.svd(w, compute_uv=False)
        imbalance.append(np.linalg.norm(a.T @ a - b.T @ b))
        gap.append((np.sum(a * a) + np.sum(b * b)) / 2 - s.sum())
        sv.append(s)
        if not np.all(np.isfinite(s)):
            raise MegarankError(f"gradient descent diverged at λ={lam}, step {step}; lower lr (now {cfg.lr})")
        if step == cfg.steps:
            break
        grad_w = 2 * (w - target)  # ∇_W ‖W − D‖²
        a, b = a - cfg.lr * (grad_w @ b + lam * a), b - cfg.lr * (grad_w.T @ a + lam * b)
    objective = float(np.sum((a @ b.T - target) ** 2) + lam / 2 * (np.sum(a * a) + np.sum(b * b)))
    return FactorRun(lam, np.array(imbalance), np.array(gap), np.array(sv), objective)


def train_direct(cfg: Config, target: np.ndarray, lam: float) -> ProxRun:
    a, b = initial_factors(cfg)
    w = a @ b.T
    sv = [np.linalg.svd(w, compute_uv=False)]
    for _ in range(cfg.steps):
        w = svt(w - cfg.lr * 2 * (w - target), cfg.lr * lam)  # gradient step on ‖W − D‖², prox of lr·λ‖·‖_*
        sv.append(np.linalg.svd(w, compute_uv=False))
    return ProxRun(lam, np.array(sv), float(np.sum((w - target) ** 2) + lam * nuclear(w)))


def fit_rate(imbalance: np.ndarray, floor: float) -> float:
    """−slope of log ‖AᵀA − BᵀB‖ against the step, over the steps before it first drops below floor × start."""
    below = np.flatnonzero(imbalance < floor * imbalance[0])
    end = int(below[0]) if below.size else len(imbalance)
    if end < 3:
        return float("nan")
    steps = np.arange(end)
    return float(-np.polyfit(steps, np.log(imbalance[:end]), 1)[0])


# ---- the experiment -----------------------------------------------------------------------------------------

def run(cfg: Config, *, progress: bool = False) -> Result:
    target = np.diag(np.asarray(cfg.diag, dtype=np.float64))
    sigma_d = np.linalg.svd(target, compute_uv=False)
    lambdas = [float(lam) for lam in cfg.lambdas]
    factor_runs, prox_runs, rows, table_rows = [], [], [], []
    for lam in lambdas:
        fr, pr = train_factors(cfg, target, lam), train_direct(cfg, target, lam)
        factor_runs.append(fr)
        prox_runs.append(pr)
        predicted_sv = nuclear_minimiser_sv(target, lam)
        # W* shares D's singular vectors, so ‖W* − D‖² = Σ(σ_i(D) − σ_i*)²
        nuclear_min = float(np.sum((sigma_d - predicted_sv) ** 2) + lam * predicted_sv.sum())
        measured = fit_rate(fr.imbalance, cfg.fit_floor)
        predicted = 2 * cfg.lr * lam
        rows.append({"lambda": lam, "measured_rate": measured, "predicted_rate": predicted,
                     "singular_values": fr.sv[-1].tolist(), "predicted_singular_values": predicted_sv.tolist()})
        table_rows.append({
            "lambda": lam, "predicted_rate": predicted, "measured_rate": measured,
            "rate_ratio": measured / predicted if predicted > 0 else float("nan"),
            "one_step_rate": float(-np.log1p(-predicted)) + 0.0 if predicted < 1 else float("nan"),  # + 0.0: no -0
            "imbalance_start": float(fr.imbalance[0]), "imbalance_end": float(fr.imbalance[-1]),
            "gap_end": float(fr.gap[-1]),
            "sv_error": float(np.abs(fr.sv[-1] - predicted_sv).max()),
            "prox_error": float(np.abs(pr.sv[-1] - predicted_sv).max()),
            "objective_l2": fr.objective, "objective_nuclear_min": nuclear_min,
            "singular_values": " ".join(f"{s:.4f}" for s in fr.sv[-1]),
            "predicted_singular_values": " ".join(f"{s:.4f}" for s in predicted_sv)})
        if progress:
            print(f"[factorized] λ={lam:g}: rate {measured:.5f} (2·lr·λ = {predicted:.5f}), "
                  f"max |σ − σ*| {table_rows[-1]['sv_error']:.1e}")

    checks = _checks(cfg, table_rows)
    figures = [Figure("fig1", "Fig 1 analogue: (a) the regulariser gap and (b) the factor imbalance over training "
                              "(dashed: the predicted decay exp(−2·lr·λ·t)), (c) final singular values vs λ "
                              "(lines: soft-thresholding of D by λ/2), (d) singular values over training at "
                              f"λ = {cfg.trace_lambda:g} (dashed: proximal gradient on W; dotted: closed form)",
                       _figure(cfg, target, factor_runs, prox_runs)),
               Figure("rates", "Fitted decay rate of ‖AᵀA − BᵀB‖ per step against the predicted 2·lr·λ",
                      _rate_figure(table_rows))]
    table = Table("factorized", tuple(table_rows[0]), table_rows,
                  caption="per λ: balancing rate, gap, and final singular values against the closed form")
    return Result(experiment="factorized", title=TITLE, checks=checks,
                  summary={"rows": rows}, figures=figures, tables=[table])


def _checks(cfg: Config, rows: list[dict]) -> list[Check]:
    positive = [r for r in rows if r["lambda"] > 0]
    zero = [r for r in rows if r["lambda"] == 0]
    checks = []
    if positive:
        ratios = [r["rate_ratio"] for r in positive]
        worst = max(positive, key=lambda r: abs(r["rate_ratio"] - 1) if np.isfinite(r["rate_ratio"]) else np.inf)
        checks.append(Check(
            "‖AᵀA − BᵀB‖ decays at the predicted rate 2·lr·λ for every λ > 0",
            all(np.isfinite(x) and abs(x - 1) <= cfg.rate_rtol for x in ratios),
            f"measured/predicted {min(ratios):.3f}..{max(ratios):.3f} over {len(positive)} values of λ (tolerance "
            f"±{cfg.rate_rtol:g}); worst λ={worst['lambda']:g}: {worst['measured_rate']:.5f} vs "
            f"{worst['predicted_rate']:.5f}"))
        gaps = [r["gap_end"] for r in positive]
        checks.append(Check(
            "the gap (‖A‖²+‖B‖²)/2 − ‖ABᵀ‖_* vanishes for every λ > 0",
            max(gaps) < cfg.gap_atol,
            f"largest final gap {max(gaps):.1e} (λ={positive[int(np.argmax(gaps))]['lambda']:g}; "
            f"tolerance {cfg.gap_atol:g})"))
    if zero:
        r0 = zero[0]
        scale = min((r["predicted_rate"] for r in positive), default=2 * cfg.lr * 0.1)
        checks.append(Check(
            "without decay (λ = 0) the factors do not balance",
            abs(r0["measured_rate"]) <= cfg.rate_rtol * scale,
            f"fitted rate {r0['measured_rate']:.2e} (below {cfg.rate_rtol:g} × the smallest positive predicted "
            f"rate {scale:.4f}); ‖AᵀA − BᵀB‖ {r0['imbalance_start']:.3f} -> {r0['imbalance_end']:.3f}, final gap "
            f"{r0['gap_end']:.3f}"))
    worst = max(rows, key=lambda r: r["sv_error"])
    checks.append(Check(
        "final singular values of ABᵀ equal soft-threshold(σ(D), λ/2) for every λ",
        worst["sv_error"] <= cfg.sv_atol,
        f"largest |σ_i(ABᵀ) − σ_i*| {worst['sv_error']:.1e} at λ={worst['lambda']:g} (tolerance {cfg.sv_atol:g})"))
    worst = max(rows, key=lambda r: r["prox_error"])
    checks.append(Check(
        "proximal gradient on W lands on the same closed form",
        worst["prox_error"] <= cfg.prox_atol,
        f"largest |σ_i(W) − σ_i*| {worst['prox_error']:.1e} at λ={worst['lambda']:g} (tolerance {cfg.prox_atol:g})"))
    errors = [abs(r["objective_l2"] - r["objective_nuclear_min"]) for r in rows]
    checks.append(Check(
        "the L2 objective of (A, B) reaches the minimum of the nuclear objective",
        max(errors) <= cfg.objective_atol,
        f"largest |L_L2(A, B) − min L_*| {max(errors):.1e} at λ={rows[int(np.argmax(errors))]['lambda']:g} "
        f"(tolerance {cfg.objective_atol:g})"))
    return checks


def _figure(cfg: Config, target: np.ndarray, factor_runs: list[FactorRun], prox_runs: list[ProxRun]) -> MplFigure:
    lambdas = np.array([fr.lam for fr in factor_runs])
    cmap = colormaps["viridis"]
    color = {lam: cmap(lam / max(lambdas.max(), 1e-12)) for lam in lambdas}
    fig = MplFigure(figsize=(12, 9), layout="constrained")
    (ax_gap, ax_imb), (ax_sv, ax_trace) = fig.subplots(2, 2)
    steps = np.arange(cfg.steps + 1)
    for fr in factor_runs:
        gap = np.where(fr.gap > 0, fr.gap, np.nan)  # rounding makes the converged gap ±1e-16
        ax_gap.plot(steps, gap, color=color[fr.lam], linewidth=1)
        ax_imb.plot(steps, np.where(fr.imbalance > 0, fr.imbalance, np.nan), color=color[fr.lam], linewidth=1)
        predicted = fr.imbalance[0] * np.exp(-2 * cfg.lr * fr.lam * steps)
        ax_imb.plot(steps, np.where(predicted > 1e-18, predicted, np.nan), color=color[fr.lam], linewidth=0.7,
                    linestyle="--")
    ax_gap.set(yscale="log", xlabel="step", ylabel="(‖A‖²+‖B‖²)/2 − ‖ABᵀ‖_*", title="(a) regulariser gap")
    ax_imb.set(yscale="log", xlabel="step", ylabel="‖AᵀA − BᵀB‖_F",
               title="(b) imbalance (dashed: exp(−2·lr·λ·t))")
    for ax in (ax_gap, ax_imb):
        ax.set_ylim(bottom=1e-16)
    norm = Normalize(vmin=0, vmax=max(lambdas.max(), 1e-12))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=[ax_gap, ax_imb], label="λ")

    grid = np.linspace(0, max(lambdas.max(), 1e-12), 200)
    closed = np.array([nuclear_minimiser_sv(target, lam) for lam in grid])
    final = np.array([fr.sv[-1] for fr in factor_runs])
    prox = np.array([pr.sv[-1] for pr in prox_runs])
    for i in range(final.shape[1]):
        ax_sv.plot(grid, closed[:, i], color=f"C{i}", linewidth=1,
                   label="soft-threshold(σ(D), λ/2)" if i == 0 else None)
        ax_sv.plot(lambdas, final[:, i], "o", color=f"C{i}", markersize=4, label="ABᵀ (GD, L2)" if i == 0 else None)
        ax_sv.plot(lambdas, prox[:, i], "x", color="k", markersize=4, label="W (prox, ‖·‖_*)" if i == 0 else None)
    ax_sv.set(xlabel="λ", ylabel="singular value", title=f"(c) singular values after {cfg.steps} steps")
    ax_sv.legend(fontsize="small")

    k = int(np.argmin(np.abs(lambdas - cfg.trace_lambda)))
    closed_trace = nuclear_minimiser_sv(target, lambdas[k])
    for i in range(final.shape[1]):
        ax_trace.plot(steps, factor_runs[k].sv[:, i], color=f"C{i}", label="ABᵀ (GD, L2)" if i == 0 else None)
        ax_trace.plot(steps, prox_runs[k].sv[:, i], color=f"C{i}", linestyle="--", linewidth=1,
                      label="W (prox, ‖·‖_*)" if i == 0 else None)
        ax_trace.axhline(closed_trace[i], color=f"C{i}", linestyle=":", linewidth=1)
    ax_trace.set_xscale("symlog", linthresh=1)
    ax_trace.set(xlim=(0, cfg.steps), xlabel="step (symlog)", ylabel="singular value",
                 title=f"(d) singular values over training, λ = {lambdas[k]:g}")
    ax_trace.legend(fontsize="small")
    return fig


def _rate_figure(rows: list[dict]) -> MplFigure:
    fig = MplFigure(figsize=(5, 4.5), layout="constrained")
    ax = fig.subplots()
    predicted = np.array([r["predicted_rate"] for r in rows])
    measured = np.array([r["measured_rate"] for r in rows])
    ax.plot([0, predicted.max() * 1.05], [0, predicted.max() * 1.05], color="gray", linestyle="--",
            label="measured = 2·lr·λ")
    ax.plot(predicted, measured, "o", label="fitted")
    ax.set(xlabel="predicted 2·lr·λ (per step)", ylabel="fitted decay rate of ‖AᵀA − BᵀB‖ (per step)")
    ax.legend()
    return fig
