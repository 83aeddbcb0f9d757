"""The runs as a Result: the checks, the tables (numbers) and the figures that report.md and summary.json hold."""

from __future__ import annotations

from megarank.analysis.spectra import PRODUCTS
from megarank.experiments.icl.checks import make_checks
from megarank.experiments.icl.config import Config
from megarank.experiments.icl.figures import figure_gap, figure_imbalance, figure_loss, figure_rank
from megarank.experiments.icl.metrics import Run, pooled
from megarank.experiments.icl.tables import HEADLINE_COLUMNS, ROW_COLUMNS, balance_table, head_rows, summary_rows
from megarank.experiments.report import Figure, Result, Table


def build_result(cfg: Config, runs: list[Run]) -> Result:
    """The Result of a finished sweep (train.sweep's runs)."""
    rows = summary_rows(cfg, runs)
    checks = make_checks(cfg, rows)
    curve_rows = [{"optimizer": r.optimizer, "lambda": r.lam, "seed": r.seed, "step": step, "loss": r.loss[i],
                   **{f"{p}_{k}": v for p in PRODUCTS for k, v in pooled(r.heads[i][p]).items()}}
                  for r in runs for i, step in enumerate(r.steps)]
    balance = balance_table(cfg, rows)
    headline = [{k: r[k] for k in HEADLINE_COLUMNS} for r in rows]
    tables = [
        Table("headline", HEADLINE_COLUMNS, headline, "rank and loss at the last step (means over layers and "
              "heads; all columns of every run in runs.csv)"),
        Table("runs", ROW_COLUMNS, rows, in_report=False),
        Table("balance", tuple(balance[0]), balance,
              "factor balance side by side at the last step: relative imbalance ‖AᵀA − BᵀB‖/(‖AᵀA‖+‖BᵀB‖) "
              "(ratio of sums over heads), and the e-folding rate per step of Σ‖PᵀP − W_V W_Vᵀ‖ against gradient "
              "flow's 2·lr·λ (relative gaps and QK rates in runs.csv)"),
        Table("curves", tuple(curve_rows[0]), curve_rows, in_report=False),
        Table("heads", tuple(head_rows(runs[:1])[0]), head_rows(runs), in_report=False),
    ]
    figures = [
        Figure("rank_vs_lambda", "rank and effective rank of P W_V and W_Qᵀ W_K vs λ, Adam + L2 and AdamW",
               figure_rank(cfg, rows)),
        Figure("imbalance_over_training", "‖PᵀP − W_V W_Vᵀ‖ and ‖W_Q W_Qᵀ − W_K W_Kᵀ‖ over training per λ "
               "(dashed: gradient flow's exp(−2·lr·λ·t)), absolute and relative", figure_imbalance(cfg, runs)),
        Figure("gap_over_training", "nuclear-vs-Frobenius gap (‖A‖²+‖B‖²)/2 − ‖ABᵀ‖_*, relative, over training",
               figure_gap(cfg, runs)),
        Figure("loss", "held-out loss vs λ and over training, with the trivial and one-GD-step references",
               figure_loss(cfg, runs, rows)),
    ]
    return Result(
        experiment="icl", title="Fig 2: weight decay on a 2-layer attention-only transformer, in-context regression",
        checks=checks, figures=figures, tables=tables,
        summary={"trivial_loss": cfg.trivial_loss, "one_step_gd_loss": cfg.one_step_gd_loss, "d_head": cfg.d_head,
                 "rows": rows})
