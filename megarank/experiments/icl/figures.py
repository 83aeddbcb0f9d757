"""The figures: rank vs λ, factor imbalance and regulariser gap over training, held-out loss."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure as MplFigure

from megarank.analysis.spectra import PRODUCTS
from megarank.experiments.icl.config import OPTIMIZER_LABELS, Config
from megarank.experiments.icl.metrics import Run
from megarank.experiments.icl.tables import mean_over_seeds

LABELS = {"qk": "W_Qᵀ W_K", "ov": "P W_V"}


def _lambda_axis(ax, lambdas: list[float]) -> None:
    positive = [lam for lam in lambdas if lam > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel("λ (weight decay on W_Q, W_K, W_V, P)")


def _curves(runs: list[Run], optimizer: str, lam: float, values) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean over seeds of values(run)) for the runs of one optimiser and λ."""
    chosen = [r for r in runs if r.optimizer == optimizer and r.lam == lam]
    return np.asarray(chosen[0].steps), np.mean([values(r) for r in chosen], axis=0)


def _lambda_colors(lambdas: list[float]) -> dict[float, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return {lam: cmap(i / max(len(lambdas) - 1, 1)) for i, lam in enumerate(sorted(lambdas))}


def figure_rank(cfg: Config, rows: list[dict]) -> MplFigure:
    fig = MplFigure(figsize=(13, 7), layout="constrained")
    axes = fig.subplots(2, 3, sharex=True)
    lambdas = sorted(cfg.lambdas)
    for i, product in enumerate(PRODUCTS):
        for j, (metric, name) in enumerate((("rank_mean", f"rank (σ > {cfg.rtol:g}·σ_max)"),
                                            ("rank_atol_mean", f"rank (σ > {cfg.atol:g})"),
                                            ("effective_rank_mean", "effective rank"))):
            ax = axes[i, j]
            for k, optimizer in enumerate(cfg.optimizers):
                y = [mean_over_seeds(rows, optimizer, lam, f"{product}_{metric}") for lam in lambdas]
                dead = [mean_over_seeds(rows, optimizer, lam, "final_loss") > cfg.collapsed_fraction * cfg.trivial_loss
                        for lam in lambdas]
                ax.plot(lambdas, y, "-", color=f"C{k}", label=OPTIMIZER_LABELS[optimizer])
                for lam, value, is_dead in zip(lambdas, y, dead):
                    ax.plot([lam], [value], "o", color=f"C{k}", markerfacecolor="none" if is_dead else f"C{k}")
            ax.axhline(cfg.d_head, color="gray", linestyle=":", linewidth=1)
            ax.set_ylim(0, cfg.d_head * 1.08)
            ax.set_title(f"{LABELS[product]}: {name}")
            _lambda_axis(ax, lambdas)
    axes[0, 0].legend(fontsize="small", title="hollow: collapsed", title_fontsize="small")
    fig.suptitle(f"mean over {cfg.n_layers} layers × {cfg.n_heads} heads after {cfg.steps} steps "
                 f"(d_head = {cfg.d_head})")
    return fig


def figure_imbalance(cfg: Config, runs: list[Run]) -> MplFigure:
    """‖AᵀA − BᵀB‖ (summed over heads, with the gradient-flow reference D_0·exp(−2·lr·λ·t) dashed) and its
    relative value, over training, per optimiser."""
    colors = _lambda_colors(cfg.lambdas)
    panels = [(p, rel) for p in ("ov", "qk") for rel in (False, True)]
    fig = MplFigure(figsize=(5.5 * len(cfg.optimizers), 12), layout="constrained")
    axes = fig.subplots(len(panels), len(cfg.optimizers), squeeze=False, sharex=True)
    for col, optimizer in enumerate(cfg.optimizers):
        for row, (product, rel) in enumerate(panels):
            ax = axes[row, col]
            floor, top = math.inf, 0.0
            for lam in sorted(cfg.lambdas):
                steps, y = _curves(runs, optimizer, lam,
                                   lambda r: r.curve(product, "imbalance_rel" if rel else "imbalance"))
                ax.plot(steps, y, color=colors[lam], label=f"λ = {lam:g}")
                floor = min(floor, float(np.min(y[y > 0], initial=math.inf)))
                top = max(top, float(np.max(y, initial=0.0)))
                if not rel and lam > 0:
                    ax.plot(steps, y[0] * np.exp(-2 * cfg.lr * lam * steps), "--", color=colors[lam], linewidth=0.8)
            ax.set_yscale("log")
            if math.isfinite(floor):  # a collapsed run's imbalance underflows to ~1e-40: show 8 decades at most
                ax.set_ylim(bottom=max(floor / 2, top * 1e-8))
            name = "PᵀP − W_V W_Vᵀ" if product == "ov" else "W_Q W_Qᵀ − W_K W_Kᵀ"
            ax.set_title(f"{OPTIMIZER_LABELS[optimizer]}: " + (f"‖{name}‖ / (‖·‖+‖·‖)" if rel
                                                               else f"Σ_heads ‖{name}‖_F"))
        axes[-1, col].set_xlabel("step")
    axes[0, 0].legend(fontsize="small", title="dashed: gradient flow", title_fontsize="small")
    return fig


def figure_gap(cfg: Config, runs: list[Run]) -> MplFigure:
    colors = _lambda_colors(cfg.lambdas)
    fig = MplFigure(figsize=(5.5 * len(cfg.optimizers), 7), layout="constrained")
    axes = fig.subplots(2, len(cfg.optimizers), squeeze=False, sharex=True)
    for col, optimizer in enumerate(cfg.optimizers):
        for row, product in enumerate(("ov", "qk")):
            ax = axes[row, col]
            for lam in sorted(cfg.lambdas):
                steps, y = _curves(runs, optimizer, lam, lambda r: r.curve(product, "gap_rel"))
                ax.plot(steps, np.maximum(y, 1e-12), color=colors[lam], label=f"λ = {lam:g}")
            ax.set_yscale("log")
            ax.set_title(f"{OPTIMIZER_LABELS[optimizer]}, {LABELS[product]}: "
                         "Σ[(‖A‖²+‖B‖²)/2 − ‖ABᵀ‖_*] / Σ(‖A‖²+‖B‖²)/2")
        axes[-1, col].set_xlabel("step")
    axes[0, 0].legend(fontsize="small")
    return fig


def figure_loss(cfg: Config, runs: list[Run], rows: list[dict]) -> MplFigure:
    fig = MplFigure(figsize=(12, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    lambdas = sorted(cfg.lambdas)
    colors = _lambda_colors(cfg.lambdas)
    styles = ("-", "--")
    for k, optimizer in enumerate(cfg.optimizers):
        left.plot(lambdas, [mean_over_seeds(rows, optimizer, lam, "final_loss") for lam in lambdas], "o-",
                  color=f"C{k}", label=OPTIMIZER_LABELS[optimizer])
        for lam in lambdas:
            steps, y = _curves(runs, optimizer, lam, lambda r: np.asarray(r.loss))
            right.plot(steps, y, styles[k % 2], color=colors[lam],
                       label=f"λ = {lam:g}" if k == 0 else None)
    for ax in (left, right):
        ax.axhline(cfg.trivial_loss, color="gray", linestyle=":", label="trivial (ŷ = 0)")
        ax.axhline(cfg.one_step_gd_loss, color="black", linestyle="-.", linewidth=1, label="one GD step")
        ax.set_yscale("log")
        ax.set_ylabel("held-out MSE of the query's y")
    _lambda_axis(left, lambdas)
    left.set_title("final loss vs λ")
    left.legend(fontsize="small")
    right.set_xlabel("step")
    right.set_title("loss over training (" + ", ".join(
        f"{s} {OPTIMIZER_LABELS[o]}" for s, o in zip(("solid", "dashed"), cfg.optimizers)) + ")")
    right.legend(fontsize="small", ncol=2)
    return fig
