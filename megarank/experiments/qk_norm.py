"""qk-norm — beyond the paper: does weight decay still lower the rank of W_QᵀW_K when a per-head RMSNorm sits on
q and k (model.qk_norm, as Qwen3 and OLMo2)? docs/paper.md, "### qk-norm".

With the norm, a head's attention scores are invariant to the scale of W_Q,h and of W_K,h separately, so the
decay can shrink that scale at no cost in loss; the penalty then has no minimiser, and its preference for a
low-rank product among factorisations of equal loss (the paper's nuclear-norm argument, which needs the loss
to depend on the product alone) is gone. The rank megarank measures (singular values above rtol·σ_max) is
scale-free too, so what the decay does to it under the norm is set by the training dynamics, not by the
penalty: this experiment measures it. The OV product has no norm and is the control.

The LLaMA-style block (RMSNorm, SwiGLU, RoPE) trained over a grid of optim.wd_attn × model.qk_norm × seeds;
per cell the per-head rank, effective rank and balance of both products of the final checkpoint and the
validation perplexity over every token of the val split. The CPU default
(configs/experiments/beyond/qk_norm.yaml) sets its largest λ_attn from the theory: a total decay Σ lr·λ of
about 1 over the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from megarank.analysis.plots import COLORS, LABELS
from megarank.analysis.spectra import PRODUCTS
from megarank.errors import MegarankError
from megarank.experiments.report import Check, Figure, Result, Table
from megarank.experiments.sweeps import (by_setting, mean_std, missing_markdown, setting_keys, total_decay,
                                         train_and_analyse)
from megarank.sweep import GridConfig

WD_ATTN, QK_NORM = "optim.wd_attn", "model.qk_norm"
METRICS = ("rank", "effective_rank", "balance")


def _default_grid() -> GridConfig:
    return GridConfig(base="configs/experiments/beyond/qk_norm_cpu.yaml", overrides=[],
                      axes={WD_ATTN: [0.0, 1.0, 4.0], QK_NORM: [False, True], "seed": [1234]},
                      run_root="runs/paper/qk-norm/cells", nproc=1)


@dataclass
class Config:
    """The grid (λ_attn × QK-norm × seeds), its evaluation and what the report checks."""

    grid: GridConfig = field(default_factory=_default_grid)
    """The runs: a training config of the LLaMA-style block and the axes (optim.wd_attn and model.qk_norm
    required; seed averaged over)."""
    out_dir: str = "runs/paper/qk-norm"
    """Where report.md, the figures, the CSVs and summary.json go."""
    run_missing: bool = True
    """Train the unfinished cells here before gathering; false only gathers the finished ones."""
    eval_batch_size: int = 16
    """Sequences per forward pass of the val-split perplexity."""
    rtol: float = 0.01
    """A singular value counts towards the rank above rtol·σ_max (megarank-rank's default)."""
    rank_drop_min: float = 0.1
    """The QK rank 'falls' when its mean at the largest λ_attn is at least this fraction below λ_attn = min's."""

    def __post_init__(self) -> None:
        for key in (WD_ATTN, QK_NORM):
            if key not in self.grid.axes:
                raise MegarankError(f"qk-norm: grid.axes must vary {key}; add it")
        if len(self.grid.axes[WD_ATTN]) < 2:
            raise MegarankError("qk-norm: grid.axes.optim.wd_attn needs at least two values to compare")
        if sorted(bool(v) for v in self.grid.axes[QK_NORM]) != [False, True]:
            raise MegarankError(f"qk-norm: grid.axes.model.qk_norm must be [false, true], got "
                                f"{self.grid.axes[QK_NORM]}")
        if not 0 < self.rtol < 1:
            raise MegarankError(f"qk-norm: rtol must be in (0, 1), got {self.rtol}")


def run(cfg: Config, *, progress: bool = True) -> Result:
    from megarank.evaluation import evaluate_checkpoint

    def measure(record: dict) -> dict:
        result = evaluate_checkpoint(record["run_dir"], split="val", batch_size=cfg.eval_batch_size, progress=False)
        return {"val_ppl": result["ppl"], "total_decay": total_decay(record, "attn")}

    results, missing = train_and_analyse(cfg.grid, run_missing=cfg.run_missing, rtol=cfg.rtol, progress=progress,
                                         measure=measure)
    cells = []
    for setting, members in by_setting(results, setting_keys(cfg.grid)).items():
        values = dict(zip(setting_keys(cfg.grid), setting))
        cell = {"wd_attn": float(values[WD_ATTN]), "qk_norm": bool(values[QK_NORM]),
                "seeds": [r.values.get("seed") for r in members]}
        for key in ("val_ppl", "total_decay"):
            cell[key] = mean_std([r.extra[key] for r in members])[0]
        for product in PRODUCTS:
            for metric in METRICS:
                cell[f"{product}_{metric}"] = float(np.mean([r.table.means()[product][metric] for r in members]))
        cells.append(cell)
    d_head = results[0].table.info.d_head
    columns = ("qk_norm", "wd_attn", "seeds", "total_decay", "val_ppl", *(f"{p}_{m}" for p in PRODUCTS
                                                                         for m in METRICS))
    rows = sorted(cells, key=lambda c: (c["qk_norm"], c["wd_attn"]))
    return Result(experiment="qk-norm", title="Beyond the paper: weight decay and the QK rank under QK-norm",
                  checks=_checks(cells, cfg),
                  summary={"cells": cells, "missing": missing, "d_head": d_head, "n_runs": len(results)},
                  figures=[Figure("rank_vs_wd_attn", "Mean rank (solid), effective rank (dashed) and balance "
                                  "(right) of W_QᵀW_K and W_O W_V over all heads and layers vs λ_attn, without "
                                  "(circles) and with (squares) QK-norm", _figure(cells, d_head))],
                  tables=[Table("cells", columns, [{k: c[k] if k != "seeds" else len(c[k]) for k in columns}
                                                   for c in rows],
                                f"Every setting (means over seeds; ranks of d_head = {d_head}; val perplexity over "
                                "every token)")],
                  markdown=missing_markdown(missing))


def _series(cells: list[dict], qk_norm: bool, key: str) -> tuple[list[float], list[float]]:
    chosen = sorted((c for c in cells if c["qk_norm"] == qk_norm), key=lambda c: c["wd_attn"])
    return [c["wd_attn"] for c in chosen], [c[key] for c in chosen]


def _drop(values: list[float]) -> float:
    """Relative fall from the first value to the last (0.4: the last is 40 % below the first)."""
    return 1 - values[-1] / values[0] if values[0] else float("nan")


def _checks(cells: list[dict], cfg: Config) -> list[Check]:
    xs, plain = _series(cells, False, "qk_rank")
    _, normed = _series(cells, True, "qk_rank")
    lambdas = ", ".join(f"{x:g}" for x in xs)

    def trend(values: list[float]) -> str:
        return " → ".join(f"{v:.1f}" for v in values)

    drop_plain, drop_norm = _drop(plain), _drop(normed)
    _, eff_plain = _series(cells, False, "qk_effective_rank")
    _, eff_norm = _series(cells, True, "qk_effective_rank")
    _, ov_plain = _series(cells, False, "ov_effective_rank")
    _, ov_norm = _series(cells, True, "ov_effective_rank")
    return [
        Check("without QK-norm the QK rank falls as λ_attn rises (the paper's claim on this block)",
              drop_plain >= cfg.rank_drop_min,
              f"{trend(plain)} for λ_attn {lambdas} ({100 * drop_plain:.0f} % lower)"),
        Check("with QK-norm the QK rank drop is less than half of that without (L2 cannot set the scale-free "
              "rank, the 2026 preprint's claim)",
              math.isfinite(drop_norm) and drop_norm < drop_plain / 2,
              f"{trend(normed)} for λ_attn {lambdas} ({100 * drop_norm:.0f} % lower, against "
              f"{100 * drop_plain:.0f} % without); effective rank {trend(eff_norm)} ({100 * _drop(eff_norm):.0f} % "
              f"lower) with the norm, {trend(eff_plain)} ({100 * _drop(eff_plain):.0f} % lower) without"),
        Check("OV effective rank (no norm on V, O: the control) falls with λ_attn in both",
              _drop(ov_plain) >= cfg.rank_drop_min and _drop(ov_norm) >= cfg.rank_drop_min,
              f"without QK-norm {trend(ov_plain)}, with {trend(ov_norm)}"),
    ]


def _figure(cells: list[dict], d_head: int):
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(13, 4), layout="constrained")
    rank_ax, ov_ax, balance_ax = fig.subplots(1, 3)
    for ax, product in ((rank_ax, "qk"), (ov_ax, "ov")):
        for qk_norm, marker in ((False, "o"), (True, "s")):
            label = "QK-norm" if qk_norm else "no norm"
            xs, ranks = _series(cells, qk_norm, f"{product}_rank")
            ax.plot(xs, ranks, marker=marker, color=COLORS[product], linestyle="-", label=f"rank, {label}",
                    alpha=1 if qk_norm else 0.6)
            xs, eff = _series(cells, qk_norm, f"{product}_effective_rank")
            ax.plot(xs, eff, marker=marker, color=COLORS[product], linestyle="--", label=f"effective, {label}",
                    alpha=1 if qk_norm else 0.6)
        ax.axhline(d_head, color="gray", linestyle=":", linewidth=1)
        ax.set_ylim(0, d_head * 1.1)
        ax.set_title(LABELS[product])
        ax.set_xlabel("λ_attn (optim.wd_attn)")
        ax.set_ylabel("mean rank")
        ax.legend(fontsize="small")
    for product in PRODUCTS:
        for qk_norm, marker in ((False, "o"), (True, "s")):
            xs, balance = _series(cells, qk_norm, f"{product}_balance")
            balance_ax.plot(xs, balance, marker=marker, color=COLORS[product],
                            label=f"{product.upper()}, {'QK-norm' if qk_norm else 'no norm'}")
    balance_ax.set_xlabel("λ_attn (optim.wd_attn)")
    balance_ax.set_ylabel("balance ‖ABᵀ‖_* / ((‖A‖²+‖B‖²)/2)")
    balance_ax.legend(fontsize="small")
    return fig
