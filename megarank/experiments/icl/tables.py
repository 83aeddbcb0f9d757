"""The runs as rows of numbers: one row per (optimiser, λ, seed) at the last step (summary.json's `rows`,
runs.csv), the per-head rows behind them (heads.csv), and λ against the two optimisers' balance (balance.csv)."""

from __future__ import annotations

import math

import numpy as np

from megarank.analysis.spectra import PRODUCTS
from megarank.experiments.icl.config import Config
from megarank.experiments.icl.metrics import Run


ROW_COLUMNS = ("optimizer", "lambda", "seed", "lr_lambda_steps", "final_loss", "loss_rel", "collapsed",
               *(f"{p}_{m}" for p in PRODUCTS for m in ("rank_mean", "rank_atol_mean", "effective_rank_mean",
                                                        "imbalance", "imbalance_rel", "imbalance_rate", "gap",
                                                        "gap_rel")), "reference_rate")
HEADLINE_COLUMNS = ("optimizer", "lambda", "seed", "lr_lambda_steps", "final_loss", "collapsed", "qk_rank_mean",
                    "ov_rank_mean", "qk_rank_atol_mean", "ov_rank_atol_mean", "qk_effective_rank_mean",
                    "ov_effective_rank_mean")


def imbalance_rate(run: Run, product: str) -> float:
    """−ln(D_final / D_0) / steps for D = Σ_heads ‖AᵀA − BᵀB‖_F: the mean e-folding rate per step, which gradient
    flow on the L2 objective makes exactly 2·lr·λ (negative: the imbalance grew)."""
    d = run.curve(product, "imbalance")
    if d[0] <= 0 or d[-1] <= 0:
        return math.inf if d[-1] <= 0 < d[0] else math.nan
    return float(-math.log(d[-1] / d[0]) / run.steps[-1])


def summary_rows(cfg: Config, runs: list[Run]) -> list[dict]:
    rows = []
    for run in runs:
        row = {"optimizer": run.optimizer, "lambda": run.lam, "seed": run.seed,
               "lr_lambda_steps": cfg.lr * run.lam * cfg.steps, "final_loss": run.loss[-1],
               "loss_rel": run.loss[-1] / cfg.trivial_loss,
               "collapsed": run.loss[-1] > cfg.collapsed_fraction * cfg.trivial_loss,
               "reference_rate": 2 * cfg.lr * run.lam}
        for product in PRODUCTS:
            for name, value in run.final(product).items():
                row[f"{product}_{name}"] = value
            row[f"{product}_imbalance_rate"] = imbalance_rate(run, product)
        rows.append(row)
    return rows


def mean_over_seeds(rows: list[dict], optimizer: str, lam: float, key: str) -> float:
    return float(np.mean([r[key] for r in rows if r["optimizer"] == optimizer and r["lambda"] == lam]))


def head_rows(runs: list[Run]) -> list[dict]:
    """Final per-head metrics of every run (the CSV behind the means)."""
    out = []
    for run in runs:
        for product in PRODUCTS:
            m = run.heads[-1][product]
            for layer, head in np.ndindex(m["rank"].shape):
                one = {k: v[layer, head] for k, v in m.items()}
                gap = one["l2_half"] - one["nuclear"]
                out.append({"optimizer": run.optimizer, "lambda": run.lam, "seed": run.seed, "layer": layer,
                            "head": head, "product": product, "rank": int(one["rank"]),
                            "rank_atol": int(one["rank_atol"]), "effective_rank": one["effective_rank"],
                            "nuclear": one["nuclear"], "l2_half": one["l2_half"], "gap": gap,
                            "imbalance": one["imbalance"],
                            "imbalance_rel": one["imbalance"] / one["gram_norm"] if one["gram_norm"] > 0 else math.nan})
    return out


def balance_table(cfg: Config, rows: list[dict]) -> list[dict]:
    """λ down the rows, the two optimisers' final relative imbalance, gap and decay rate side by side."""
    out = []
    for lam in sorted(cfg.lambdas):
        row = {"lambda": lam, "lr_lambda_steps": cfg.lr * lam * cfg.steps, "reference_rate": 2 * cfg.lr * lam}
        for o in cfg.optimizers:
            for key in ("ov_imbalance_rel", "qk_imbalance_rel", "ov_imbalance_rate"):
                row[f"{o}:{key}"] = mean_over_seeds(rows, o, lam, key)
        out.append(row)
    return out
