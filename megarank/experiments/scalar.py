"""Fig 5: scalars, w = a·b against w itself, under AdamW (decoupled decay) and Adam + L2.

The loss is L(w) = ½(w − y)², trained either directly on w or on the factorisation w = a·b, by
torch.optim.Adam(weight_decay=λ) (λ·p added to the gradient: L2 in the loss) and by torch.optim.AdamW
(p ← p·(1 − lr·λ) before the Adam step: decoupled). Where each ends up, derived:

- Adam + L2 converges to a stationary point of the regularised loss (its step m̂/(√v̂ + ε) vanishes only where
  the gradient does).
  direct:      ½(w − y)² + (λ/2)w²               ->  w = y / (1 + λ)                (ridge: shrunk, never zero)
  factorised:  ½(ab − y)² + (λ/2)(a² + b²)        ->  (ab − y)b + λa = 0 = (ab − y)a + λb; multiplying by a and
               by b gives a² = b², and then ab = sign(y)·max(|y| − λ, 0): soft-thresholding, the scalar case of
               the nuclear norm (|ab| = (a² + b²)/2 at balance).
- AdamW's fixed point balances the decay against the normalised Adam step u = m̂/(√v̂ + ε): lr·u = −lr·λ·p. At a
  fixed point the gradient g is constant, so m̂ = g, v̂ = g² and u = g/(|g| + ε), |u| < 1.
  direct:      |g|/(|g| + ε) = λ|w|: either |w| = 1/λ (with a persistent gradient, |y| > 1/λ) or g ≈ 0 (w = y,
               up to a residual λε/(1 − λ|y|)). So w = sign(y)·min(|y|, 1/λ): the loss minimised on the box
               |w| <= 1/λ, a clip rather than a shrink.
  factorised:  |rb|/(|rb| + ε) = λ|a| and |ra|/(|ra| + ε) = λ|b| with r = ab − y. The left side grows with
               |b| (resp. |a|), so |a| > |b| would need λ|a| < λ|b|: the fixed point is balanced, |a| = |b| = c,
               with c = 1/λ when |y| > 1/λ² and ab = y otherwise. So ab = sign(y)·min(|y|, 1/λ²).
  In the interior case (ab = y) the gradient is of order ε at the fixed point, and the balancing waits for v̂
  to forget the early gradients (a few 1/(1 − β2) steps): hence β2 = 0.95, the paper's LM value, by default.

Runtime: a few seconds (the scalar problems, every λ, both optimisers and parametrisations, in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # no display; as megarank/analysis/plots.py

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure as MplFigure

from megarank.errors import MegarankError
from megarank.experiments.report import Check, Figure, Result, Table

TITLE = "Fig 5: scalars w = a·b vs w, AdamW (decoupled) vs Adam + L2"
OPTIMIZERS = ("adam_l2", "adamw")
OPTIMIZER_LABELS = {"adam_l2": "Adam + L2 (torch.optim.Adam, weight_decay=λ)",
                    "adamw": "AdamW (torch.optim.AdamW, decoupled weight_decay=λ)"}
PARAMETRIZATIONS = ("factorized", "direct")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise MegarankError(message)


@dataclass
class Config:
    """Scalar regression ½(w − y)² on w = a·b or on w, for every λ and both optimisers."""

    y: float = 1.5
    """The target of L(w) = ½(w − y)². With the default λ grid both regimes of each optimiser show: L2's
    soft-threshold reaches zero at λ >= |y|, AdamW's box 1/λ (1/λ² factorised) binds only for λ > 1/|y|."""
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.6, 1.0, 2.0])
    """Weight decay λ, one run per value and optimiser and parametrisation; 0 is the no-decay reference."""
    a0: float = 0.2
    """Initial a of the factorised run; unbalanced against b0 so that the balancing shows."""
    b0: float = 1.2
    """Initial b of the factorised run. The direct run starts at w = a0·b0, the same product."""
    steps: int = 3000
    """Optimiser steps of each run."""
    lr: float = 0.02
    """Peak learning rate (Adam's step is about lr per step, so the paths cover a few units in a few hundred
    steps); both optimisers use it, AdamW's decay per step is lr·λ."""
    min_lr_ratio: float = 0.01
    """The learning rate is cosine-annealed from lr to min_lr_ratio·lr over the run, so Adam's O(lr)
    oscillation around its fixed point dies out; 1.0 keeps it constant. Fixed points do not depend on it."""
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.95
    """Adam's second-moment decay (the paper's LM value). AdamW's interior fixed point is reached once v̂ has
    forgotten the early gradients, in a few 1/(1 − beta2) steps; 0.999 would need tens of thousands."""
    eps: float = 1e-8
    """Adam's epsilon."""
    w_atol: float = 1e-3
    """A final w (or a·b) passes when within this of its closed form."""
    balance_atol: float = 0.01
    """Factors count as balanced when ||a| − |b|| is below this."""
    out_dir: str = "runs/paper/scalar"
    """Where report.md, the PNGs, CSVs and summary.json go."""

    def __post_init__(self) -> None:
        _require(len(self.lambdas) >= 1, "lambdas is empty; give at least one λ, e.g. lambdas=[0,1]")
        _require(all(lam >= 0 for lam in self.lambdas), f"lambdas must be >= 0, got {list(self.lambdas)}")
        _require(self.a0 != 0 or self.b0 != 0, "a0 and b0 are both 0, a saddle the factors never leave; "
                                               "set e.g. a0=0.2 b0=1.2")
        _require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _require(0 < self.min_lr_ratio <= 1, f"min_lr_ratio must be in (0, 1], got {self.min_lr_ratio}")
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
                 f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        _require(self.eps > 0, f"eps must be > 0, got {self.eps}")
        _require(self.w_atol > 0 and self.balance_atol > 0, "w_atol and balance_atol must be > 0")


# ---- the closed forms ---------------------------------------------------------------------------------------

def predicted_w(optimizer: str, parametrization: str, y: float, lam: float) -> float:
    """Where w (or a·b) ends up, from the fixed points derived in the module docstring."""
    if optimizer == "adam_l2":
        return y / (1 + lam) if parametrization == "direct" else math.copysign(max(abs(y) - lam, 0.0), y)
    if lam == 0:
        return y
    bound = 1 / lam if parametrization == "direct" else 1 / lam ** 2
    return math.copysign(min(abs(y), bound), y)


# ---- one run ------------------------------------------------------------------------------------------------

@dataclass
class Trajectory:
    """One run's trajectory, index t = after t steps (t = 0..steps); a and b are NaN for the direct run."""

    optimizer: str
    parametrization: str
    lam: float
    a: np.ndarray
    b: np.ndarray
    w: np.ndarray


def train(cfg: Config, optimizer: str, parametrization: str, lam: float) -> Trajectory:
    if parametrization == "factorized":
        params = [torch.tensor(cfg.a0, dtype=torch.float64), torch.tensor(cfg.b0, dtype=torch.float64)]
    else:
        params = [torch.tensor(cfg.a0 * cfg.b0, dtype=torch.float64)]
    opt_class = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_class(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=lam, foreach=False)
    floor = cfg.min_lr_ratio

    def cosine(step: int) -> float:
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    trace = []

    for _ in range(cfg.steps + 1):
        values = [p.item() for p in params]
        trace.append(values)
        if len(trace) > cfg.steps:
            break
        # ∇ of ½(w − y)², written out (autograd would cost more than the rest of the step on scalars)
        if parametrization == "factorized":
            a, b = values
            grads = [(a * b - cfg.y) * b, (a * b - cfg.y) * a]
        else:
            grads = [values[0] - cfg.y]
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        schedule.step()
    values = np.array(trace)
    if not np.all(np.isfinite(values)):
        raise MegarankError(f"{optimizer} on {parametrization} diverged at λ={lam}; lower lr (now {cfg.lr})")
    if parametrization == "factorized":
        a, b = values[:, 0], values[:, 1]
        return Trajectory(optimizer, parametrization, lam, a, b, a * b)
    nan = np.full(len(values), np.nan)
    return Trajectory(optimizer, parametrization, lam, nan, nan, values[:, 0])


def balanced_from(imbalance: np.ndarray, atol: float) -> int | None:
    """First step after which ||a| − |b|| stays below atol, or None if it never settles there."""
    above = np.flatnonzero(imbalance >= atol)
    if above.size == 0:
        return 0
    return int(above[-1]) + 1 if above[-1] + 1 < len(imbalance) else None


# ---- the experiment -----------------------------------------------------------------------------------------

def run(cfg: Config, *, progress: bool = False) -> Result:
    lambdas = [float(lam) for lam in cfg.lambdas]
    paths: list[Trajectory] = []
    rows = []
    for optimizer in OPTIMIZERS:
        for parametrization in PARAMETRIZATIONS:
            for lam in lambdas:
                path = train(cfg, optimizer, parametrization, lam)
                paths.append(path)
                w, target = float(path.w[-1]), predicted_w(optimizer, parametrization, cfg.y, lam)
                factorized = parametrization == "factorized"
                imbalance = np.abs(np.abs(path.a) - np.abs(path.b))
                rows.append({
                    "optimizer": optimizer, "parametrization": parametrization, "lambda": lam,
                    "w": w, "predicted_w": target, "error": abs(w - target),
                    "a": float(path.a[-1]) if factorized else None,
                    "b": float(path.b[-1]) if factorized else None,
                    "balance": float(abs(path.a[-1]) - abs(path.b[-1])) if factorized else None,
                    "balanced_from_step": balanced_from(imbalance, cfg.balance_atol) if factorized else None})
                if progress:
                    print(f"[scalar] {optimizer:7s} {parametrization:10s} λ={lam:<4g} w={w:.5f} "
                          f"(predicted {target:.5f})")
    checks = _checks(cfg, rows)
    figures = [Figure(f"paths_{optimizer}", f"{OPTIMIZER_LABELS[optimizer]}: paths in the (a, b) plane, w over "
                                            f"steps, and the factor imbalance, for λ in {lambdas}",
                      _figure(cfg, optimizer, [p for p in paths if p.optimizer == optimizer]))
               for optimizer in OPTIMIZERS]
    columns = ("optimizer", "parametrization", "lambda", "w", "predicted_w", "error", "a", "b", "balance",
               "balanced_from_step")
    table = Table("scalar", columns, rows, caption=f"where each run ends (y = {cfg.y:g}, {cfg.steps} steps)")
    summary_rows = [{k: r[k] for k in ("optimizer", "parametrization", "lambda", "w", "predicted_w", "a", "b",
                                       "balance")} for r in rows]
    return Result(experiment="scalar", title=TITLE, checks=checks,
                  summary={"y": cfg.y, "rows": summary_rows}, figures=figures, tables=[table])


def _select(rows: list[dict], optimizer: str, parametrization: str) -> list[dict]:
    return [r for r in rows if r["optimizer"] == optimizer and r["parametrization"] == parametrization]


def _checks(cfg: Config, rows: list[dict]) -> list[Check]:
    laws = {("adam_l2", "direct"): "the ridge solution y/(1 + λ)",
            ("adam_l2", "factorized"): "the soft-threshold sign(y)·max(|y| − λ, 0), balanced |a| = |b| for λ > 0",
            ("adamw", "direct"): "the clip sign(y)·min(|y|, 1/λ)",
            ("adamw", "factorized"): "sign(y)·min(|y|, 1/λ²), balanced |a| = |b| for λ > 0"}
    names = {"adam_l2": "Adam + L2", "adamw": "AdamW"}
    checks = []
    for (optimizer, parametrization), law in laws.items():
        selected = _select(rows, optimizer, parametrization)
        worst = max(selected, key=lambda r: r["error"])
        passed = worst["error"] <= cfg.w_atol
        detail = (f"largest |w − predicted| {worst['error']:.1e} at λ={worst['lambda']:g} (w {worst['w']:.4f} vs "
                  f"{worst['predicted_w']:.4f}; tolerance {cfg.w_atol:g})")
        if parametrization == "factorized":
            decayed = [r for r in selected if r["lambda"] > 0]
            if decayed:
                unbalanced = max(decayed, key=lambda r: abs(r["balance"]))
                passed = passed and abs(unbalanced["balance"]) <= cfg.balance_atol
                detail += (f"; largest ||a| − |b|| for λ > 0: {abs(unbalanced['balance']):.1e} at "
                           f"λ={unbalanced['lambda']:g} (tolerance {cfg.balance_atol:g})")
        on = "a·b" if parametrization == "factorized" else "w"
        checks.append(Check(f"{names[optimizer]} on {on} ends at {law}", passed, detail))
    start = abs(abs(cfg.a0) - abs(cfg.b0))
    undecayed = [r for r in rows if r["parametrization"] == "factorized" and r["lambda"] == 0]
    if undecayed and start > cfg.balance_atol:
        worst = min(undecayed, key=lambda r: abs(r["balance"]))
        checks.append(Check(
            "without decay (λ = 0) the factors stay unbalanced",
            abs(worst["balance"]) > cfg.balance_atol,
            f"||a| − |b|| {start:.3f} at the start, {abs(worst['balance']):.3f} at the end ({worst['optimizer']})"))
    return checks


def _figure(cfg: Config, optimizer: str, paths: list[Trajectory]) -> MplFigure:
    lambdas = sorted({p.lam for p in paths})
    cmap = colormaps["viridis"]
    color = {lam: cmap(i / max(len(lambdas) - 1, 1)) for i, lam in enumerate(lambdas)}
    fig = MplFigure(figsize=(15, 4.8), layout="constrained")
    ax_plane, ax_w, ax_bal = fig.subplots(1, 3)

    factorized = [p for p in paths if p.parametrization == "factorized"]
    extent = max(2.0, 1.1 * max(np.nanmax(np.abs(np.r_[p.a, p.b])) for p in factorized))
    grid = np.linspace(-extent, extent, 300)
    ga, gb = np.meshgrid(grid, grid)
    ax_plane.contour(ga, gb, 0.5 * (ga * gb - cfg.y) ** 2, levels=12, colors="lightgray", linewidths=0.6)
    ax_plane.contour(ga, gb, ga * gb - cfg.y, levels=[0.0], colors="gray", linewidths=1.2)
    ax_plane.plot(grid, grid, color="gray", linestyle="--", linewidth=0.8, label="a = b (balanced)")
    ax_plane.plot(grid, -grid, color="gray", linestyle="--", linewidth=0.8)
    for p in factorized:
        ax_plane.plot(p.a, p.b, color=color[p.lam], linewidth=1.3, label=f"λ = {p.lam:g}")
        ax_plane.plot(p.a[-1], p.b[-1], "o", color=color[p.lam], markersize=5)
        c = math.sqrt(abs(predicted_w(optimizer, "factorized", cfg.y, p.lam)))
        if p.lam > 0:
            ax_plane.plot(c, math.copysign(c, cfg.y), "*", color=color[p.lam], markersize=11,
                          markeredgecolor="k", markeredgewidth=0.5)
    ax_plane.plot(cfg.a0, cfg.b0, "ks", markersize=5, label="start")
    ax_plane.set(xlim=(-0.2 * extent, extent), ylim=(-0.2 * extent, extent), aspect="equal", xlabel="a", ylabel="b",
                 title="(a, b) paths (solid gray: ab = y; ★ predicted end)")
    ax_plane.legend(fontsize="x-small", loc="upper right")

    for p in paths:
        style = "-" if p.parametrization == "factorized" else "--"
        ax_w.plot(np.arange(len(p.w)), p.w, style, color=color[p.lam], linewidth=1.2)
        ax_w.axhline(predicted_w(optimizer, p.parametrization, cfg.y, p.lam), color=color[p.lam], linestyle=":",
                     linewidth=0.8)
    ax_w.plot([], [], "k-", label="a·b (factorised)")
    ax_w.plot([], [], "k--", label="w (direct)")
    ax_w.plot([], [], "k:", label="closed form")
    ax_w.set_xscale("symlog", linthresh=10)
    ax_w.set(xlim=(0, cfg.steps), xlabel="step (symlog)", ylabel="w", title=f"w over training (y = {cfg.y:g})")
    ax_w.legend(fontsize="small")

    for p in factorized:
        imbalance = np.abs(np.abs(p.a) - np.abs(p.b))
        ax_bal.plot(np.arange(len(imbalance)), np.where(imbalance > 0, imbalance, np.nan), color=color[p.lam],
                    label=f"λ = {p.lam:g}")
    ax_bal.axhline(cfg.balance_atol, color="gray", linestyle=":", linewidth=0.8, label="balance_atol")
    ax_bal.set(yscale="log", xlabel="step", ylabel="||a| − |b||", title="factor imbalance")
    ax_bal.legend(fontsize="x-small")
    fig.suptitle(OPTIMIZER_LABELS[optimizer])
    return fig
