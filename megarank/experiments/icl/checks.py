"""The measured criteria behind the verdict: the task is learnt at λ = 0; per optimiser, the rank falls as λ
rises (over the runs that did not collapse) and weight decay balances the factors."""

from __future__ import annotations

from megarank.analysis.spectra import PRODUCTS
from megarank.experiments.icl.config import OPTIMIZER_LABELS, Config
from megarank.experiments.icl.tables import mean_over_seeds
from megarank.experiments.report import Check


def _fmt(values: list[float], digits: int = 2) -> str:
    return " → ".join(f"{v:.{digits}f}" for v in values)


def make_checks(cfg: Config, rows: list[dict]) -> list[Check]:
    """The checks, each with the numbers it was decided on (tables.summary_rows' rows)."""
    lambdas = sorted(cfg.lambdas)
    checks: list[Check] = []
    opt0 = cfg.optimizers[0]
    loss0 = mean_over_seeds(rows, opt0, 0.0, "final_loss")
    checks.append(Check(
        "the task is learnt at λ = 0",
        loss0 < cfg.learnt_fraction * cfg.trivial_loss,
        f"held-out loss {loss0:.3g} vs trivial predictor {cfg.trivial_loss:.3g} (ratio {loss0 / cfg.trivial_loss:.3f}, "
        f"needs < {cfg.learnt_fraction:g}) and one GD step {cfg.one_step_gd_loss:.3g}"))
    for optimizer in cfg.optimizers:
        label = OPTIMIZER_LABELS[optimizer]
        live = [lam for lam in lambdas if mean_over_seeds(rows, optimizer, lam, "final_loss")
                <= cfg.collapsed_fraction * cfg.trivial_loss]
        dead = [lam for lam in lambdas if lam not in live]
        # rank: non-increasing in λ over the runs that still predict something (half a direction of slack for
        # the mean over heads), and lower at the largest such λ than at λ = 0
        parts, ok = [], len(live) >= 2
        for product in PRODUCTS:
            ranks = [mean_over_seeds(rows, optimizer, lam, f"{product}_rank_mean") for lam in live]
            atol_ranks = [mean_over_seeds(rows, optimizer, lam, f"{product}_rank_atol_mean") for lam in live]
            ok &= len(ranks) >= 2 and ranks[-1] < ranks[0] and all(b <= a + 0.5 for a, b in zip(ranks, ranks[1:]))
            parts.append(f"{product.upper()} rank {_fmt(ranks)} (σ > atol: {_fmt(atol_ranks)}) of {cfg.d_head}")
        checks.append(Check(
            f"rank falls as λ rises ({label})", bool(ok),
            f"over λ = {', '.join(f'{lam:g}' for lam in live)}: " + "; ".join(parts)
            + (f"; λ = {', '.join(f'{lam:g}' for lam in dead)} collapsed (loss ≈ trivial), left out" if dead else "")))
        # balance: the relative imbalance at the end, against λ = 0's, where the decay has had time to act
        judged = [lam for lam in live if lam > 0 and cfg.lr * lam * cfg.steps >= 1]
        parts, ok = [], bool(judged)
        for product in PRODUCTS:
            base = mean_over_seeds(rows, optimizer, 0.0, f"{product}_imbalance_rel")
            values = [mean_over_seeds(rows, optimizer, lam, f"{product}_imbalance_rel") for lam in judged]
            ok &= all(v < cfg.balanced_fraction * base for v in values)
            parts.append(f"{product.upper()} {base:.3f} at λ = 0 vs "
                         + ", ".join(f"{v:.3f} at λ = {lam:g}" for v, lam in zip(values, judged)))
        checks.append(Check(
            f"weight decay balances the factors ({label})", bool(ok),
            "final ‖AᵀA − BᵀB‖_F / (‖AᵀA‖_F + ‖BᵀB‖_F) (needs < "
            f"{cfg.balanced_fraction:g}× λ = 0's at every non-collapsed λ with lr·λ·steps >= 1): "
            + ("; ".join(parts) if judged else "no non-collapsed λ > 0 with lr·λ·steps >= 1")))
    return checks
