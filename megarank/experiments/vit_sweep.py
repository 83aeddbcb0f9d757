"""vit-sweep — Fig 3 (right) (docs/paper.md, "### vit-sweep"): the ViT trained over optim.wd_attn (the other
decays fixed), the mean rank of W_QᵀW_K and W_O W_V over all heads and layers of the final checkpoint, and top-1
validation accuracy (reported, not checked: the paper shows rank only for the ViT).

The CPU default (configs/experiments/paper/vit_sweep.yaml) trains a small ViT on the embedded 8×8 digits; as for
the GPT, λ_attn reaches a total decay Σ lr·λ of order 1. The 16×A100 preset (vit_sweep_16xa100.yaml) is the
ImageNet ViT-S/16 sweep, launched with megarank-sweep and gathered here with run_missing=false.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from megarank.analysis.plots import LABELS
from megarank.analysis.spectra import PRODUCTS
from megarank.errors import MegarankError
from megarank.experiments.report import Check, Figure, Result, Table, timescale_table
from megarank.experiments.sweeps import (by_setting, mean_std, missing_markdown, monotone, setting_keys,
                                         train_and_analyse)
from megarank.sweep import GridConfig

WD_ATTN = "optim.wd_attn"


def _default_grid() -> GridConfig:
    return GridConfig(base="configs/experiments/paper/vit_cpu.yaml", overrides=[],
                      axes={WD_ATTN: [0.0, 1.0, 3.0], "seed": [1234]}, run_root="runs/paper/vit-sweep/cells", nproc=1)


@dataclass
class Config:
    """The ViT λ_attn sweep and the criteria its report checks."""

    grid: GridConfig = field(default_factory=_default_grid)
    """The runs: a ViT training config, the axes (optim.wd_attn required; seed averaged over) and where the cells
    train (see megarank-sweep)."""
    out_dir: str = "runs/paper/vit-sweep"
    """Where report.md, the figures, the CSVs and summary.json go."""
    run_missing: bool = True
    """Train the unfinished cells here, in sequence, before gathering; false only gathers what has finished."""
    rtol: float = 0.01
    """A singular value counts towards the rank above rtol·σ_max (megarank-rank's default)."""
    rank_drop_min: float = 0.1
    """The rank 'falls' when its mean at the largest wd_attn is at least this fraction below the smallest's."""

    def __post_init__(self) -> None:
        if WD_ATTN not in self.grid.axes or len(self.grid.axes[WD_ATTN]) < 2:
            raise MegarankError("vit-sweep: grid.axes must vary optim.wd_attn over at least two values")
        if set(self.grid.axes) - {WD_ATTN, "seed"}:
            raise MegarankError(f"vit-sweep: grid.axes may only vary optim.wd_attn and seed, got "
                                f"{', '.join(self.grid.axes)}; use megarank-sweep for other grids")
        if not 0 < self.rtol < 1:
            raise MegarankError(f"vit-sweep: rtol must be in (0, 1), got {self.rtol}")


def run(cfg: Config, *, progress: bool = True) -> Result:
    results, missing = train_and_analyse(cfg.grid, run_missing=cfg.run_missing, rtol=cfg.rtol, progress=progress)
    rows = []
    for setting, members in by_setting(results, setting_keys(cfg.grid)).items():
        row = {"wd_attn": float(setting[0]), "seeds": [r.values.get("seed") for r in members]}
        row["val_acc_mean"], row["val_acc_std"] = mean_std([r.record.get("val_acc") for r in members])
        for product in PRODUCTS:
            for metric in ("rank", "effective_rank", "balance"):
                row[f"{product}_{metric}_mean"] = float(np.mean([r.table.means()[product][metric] for r in members]))
        rows.append(row)
    d_head = results[0].table.info.d_head
    xs = [r["wd_attn"] for r in rows]
    checks = []
    for product in PRODUCTS:
        ranks = [r[f"{product}_rank_mean"] for r in rows]
        falls = ranks[-1] <= (1 - cfg.rank_drop_min) * ranks[0] and monotone(ranks, decreasing=True, slack=0.02)
        checks.append(Check(f"{product.upper()} mean rank falls as wd_attn rises", falls,
                            f"{' → '.join(f'{v:.1f}' for v in ranks)} of {d_head} for wd_attn "
                            f"{', '.join(f'{x:g}' for x in xs)}"))
    columns = ("wd_attn", "val_acc_mean", "val_acc_std", "qk_rank_mean", "ov_rank_mean", "qk_effective_rank_mean",
               "ov_effective_rank_mean", "qk_balance_mean", "ov_balance_mean")
    figures = [Figure("rank_vs_wd_attn", "Fig 3 (right) analogue: mean rank (solid) and effective rank (dashed) over "
                      "all heads and layers vs wd_attn; top-1 on the right axis", _figure(rows, d_head))]
    return Result(experiment="vit-sweep", title="Fig 3 (right): ViT rank vs wd_attn", checks=checks,
                  summary={"rows": rows, "missing": missing, "d_head": d_head}, figures=figures,
                  markdown=missing_markdown(missing),
                  tables=[Table("rows", columns, [{k: r[k] for k in columns} for r in rows],
                                "Mean over seeds per wd_attn"),
                          timescale_table([r.record for r in results], list(cfg.grid.axes))])


def _figure(rows: list[dict], d_head: int):
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    xs = [r["wd_attn"] for r in rows]
    for i, product in enumerate(PRODUCTS):
        ax.plot(xs, [r[f"{product}_rank_mean"] for r in rows], marker="o", color=f"C{i}", label=f"{LABELS[product]} rank")
        ax.plot(xs, [r[f"{product}_effective_rank_mean"] for r in rows], "--", marker="s", color=f"C{i}",
                label=f"{LABELS[product]} effective rank")
    ax.axhline(d_head, color="gray", linestyle=":", linewidth=1, label=f"d_head = {d_head}")
    ax.set_xlabel("λ_attn (optim.wd_attn)")
    ax.set_ylabel("mean over heads and layers")
    twin = ax.twinx()
    acc = [r["val_acc_mean"] for r in rows]
    twin.plot(xs, [a if math.isfinite(a) else np.nan for a in acc], ":", marker="^", color="black", label="top-1")
    twin.set_ylabel("top-1 (validation)")
    ax.legend(fontsize="small", loc="lower left")
    twin.legend(fontsize="small", loc="upper right")
    return fig
