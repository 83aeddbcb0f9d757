"""lm-sweep — Fig 3 (left) and Table 1 (docs/paper.md, "### lm-sweep (Table 1, Fig 3)"): the GPT trained over a
grid of optim.wd_attn × optim.wd_mlp × seeds; per cell the per-head rank of W_QᵀW_K and W_O W_V of the final
checkpoint, validation perplexity (the run's last validation record) and perplexity over every token of a
held-out split (megarank-eval).

The report lays λ_attn out by the total decay Σ lr·λ_attn over the run (megarank/optim/timescales.py, through
the sweep's gather) and states at which total decay the mean QK and OV rank fall to half their value at the
smallest λ_attn (interpolated linearly between the grid's cells; "not within the grid" when none is that low).

The CPU default (configs/experiments/paper/lm_sweep.yaml) is chosen from the theory, not tuned on the result:
decoupled decay shrinks a weight by exp(-Σ_t lr_t·λ), and the rank falls visibly only when that total is of
order 1, so λ_attn spans a total decay of 0 to about 3 over a few hundred steps of lr 1e-3. The 16×A100 preset
(lm_sweep_16xa100.yaml) runs the paper's grid with five seeds through the same grid, on a cluster:
`megarank-sweep launch` writes the SLURM array, and this experiment with run_missing=false gathers it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from megarank.analysis.plots import COLORS, LABELS
from megarank.analysis.spectra import PRODUCTS
from megarank.errors import MegarankError
from megarank.experiments.report import Check, Figure, Result, Table, timescale_table
from megarank.experiments.sweeps import (CellResult, by_setting, fmt_mean_std, halving_point, mean_std,
                                         missing_markdown, monotone, perplexity_measure, setting_keys, total_decay,
                                         train_and_analyse)
from megarank.sweep import GridConfig

WD_ATTN, WD_MLP = "optim.wd_attn", "optim.wd_mlp"


def _default_grid() -> GridConfig:
    return GridConfig(base="configs/experiments/paper/lm_cpu.yaml", overrides=[],
                      axes={WD_ATTN: [0.0, 3.0, 9.0], WD_MLP: [0.1, 3.0], "seed": [1234]},
                      run_root="runs/paper/lm-sweep/cells", nproc=1)


@dataclass
class Config:
    """The LM grid, its evaluation and the criteria its report checks."""

    grid: GridConfig = field(default_factory=_default_grid)
    """The runs: a training config, the axes (optim.wd_attn and optim.wd_mlp required; seed averaged over) and
    where the cells train (see megarank-sweep)."""
    out_dir: str = "runs/paper/lm-sweep"
    """Where report.md, the figures, the CSVs and summary.json go."""
    run_missing: bool = True
    """Train the unfinished cells here, in sequence, before gathering; false only gathers what has finished
    (a cluster sweep), listing the missing cells."""
    eval_split: str = "test"
    """Split evaluated over every token by megarank-eval for the Table 1 analogue: 'test', 'val' or 'none'."""
    eval_batch_size: int = 16
    """Sequences per forward pass of that evaluation."""
    rtol: float = 0.01
    """A singular value counts towards the rank above rtol·σ_max (megarank-rank's default)."""
    plot_layers: Optional[list[int]] = None
    """Layers shown per head (Fig 3 style); None: the middle layer and the last (the paper shows layer 5 of 12)."""
    rank_drop_min: float = 0.1
    """The rank 'falls' when its mean at the largest wd_attn is at least this fraction below the smallest's."""
    balance_min: float = 0.9
    """Trained factors count as balanced when ‖ABᵀ‖_* / ((‖A‖²+‖B‖²)/2) averages at least this (1 = exact)."""

    def __post_init__(self) -> None:
        for key in (WD_ATTN, WD_MLP):
            if key not in self.grid.axes:
                raise MegarankError(f"lm-sweep: grid.axes must vary {key} (Table 1 is wd_attn × wd_mlp); add it")
        if len(self.grid.axes[WD_ATTN]) < 2:
            raise MegarankError("lm-sweep: grid.axes.optim.wd_attn needs at least two values to compare")
        if self.eval_split not in ("test", "val", "none"):
            raise MegarankError(f"lm-sweep: eval_split must be test, val or none, got '{self.eval_split}'")
        if not 0 < self.rtol < 1:
            raise MegarankError(f"lm-sweep: rtol must be in (0, 1), got {self.rtol}")


def run(cfg: Config, *, progress: bool = True) -> Result:
    measure = None if cfg.eval_split == "none" else perplexity_measure((cfg.eval_split,),
                                                                       batch_size=cfg.eval_batch_size,
                                                                       progress=progress)
    results, missing = train_and_analyse(cfg.grid, run_missing=cfg.run_missing, rtol=cfg.rtol, progress=progress,
                                         measure=measure)
    keys = setting_keys(cfg.grid)
    cells = _cells(results, keys, cfg.eval_split)
    wd_attn = sorted({c["wd_attn"] for c in cells})
    wd_mlp = sorted({c["wd_mlp"] for c in cells})
    ppl_key = "test_ppl" if cfg.eval_split == "test" else "val_ppl"
    checks = _checks(cells, wd_attn, wd_mlp, cfg, ppl_key)
    halving = _halving(cells, wd_mlp)
    d_head = results[0].table.info.d_head
    layers = cfg.plot_layers or sorted({results[0].table.info.n_layers // 2, results[0].table.info.n_layers - 1})
    figures = [
        Figure("rank_per_head", f"Fig 3 (left) analogue: rank per head of W_QᵀW_K and W_O W_V at layers "
               f"{', '.join(map(str, layers))}, one bar per wd_attn (wd_mlp {wd_mlp[0]:g}, seed "
               f"{results[0].values.get('seed', '-')})", _rank_per_head_figure(results, layers, wd_mlp[0])),
        Figure("rank_vs_wd_attn", "Mean rank (solid) and effective rank (dashed) over all heads and layers vs "
               "the total decay Σ lr·λ_attn (each point labelled with its λ_attn), one line per wd_mlp (error "
               "bars: std over seeds)", _rank_vs_wd(cells, wd_mlp, d_head)),
        Figure("ppl_vs_wd_attn", f"{ppl_key.replace('_', ' ')} vs Σ lr·λ_attn, one line per wd_mlp",
               _ppl_vs_wd(cells, wd_mlp, ppl_key)),
    ]
    columns = ("wd_attn", "wd_mlp", "seeds", "total_decay_attn", "val_ppl_mean", "val_ppl_std", "test_ppl_mean",
               "test_ppl_std", "qk_rank_mean", "ov_rank_mean", "qk_effective_rank_mean", "ov_effective_rank_mean",
               "qk_balance_mean", "ov_balance_mean")
    per_run = [{**r.values, "cell": r.record["cell"], "val_ppl": r.record.get("val_ppl"), **r.extra,
                **{f"{p}_{m}": r.table.means()[p][m] for p in PRODUCTS for m in ("rank", "effective_rank")}}
               for r in results]
    tables = [Table("cells", columns, [{k: c[k] if k != "seeds" else len(c[k]) for k in columns} for c in cells],
                    "Every setting: means (and stds) over seeds", in_report=False),
              Table("runs", tuple(per_run[0]), per_run, "Every run", in_report=False),
              timescale_table([r.record for r in results], list(cfg.grid.axes))]
    markdown = (_table1(cells, wd_attn, wd_mlp, ppl_key) + "\n\n" + _rank_table(cells, wd_attn, wd_mlp, d_head)
                + "\n\n" + _halving_markdown(halving))
    if missing:
        markdown += "\n\n" + missing_markdown(missing)
    return Result(experiment="lm-sweep", title="Fig 3 (left) + Table 1: GPT over wd_attn × wd_mlp",
                  checks=checks,
                  summary={"cells": cells, "missing": missing, "perplexity": ppl_key, "d_head": d_head,
                           "n_runs": len(results), "halving": halving},
                  figures=figures, tables=tables, markdown=markdown)


def _cells(results: list[CellResult], keys: list[str], eval_split: str) -> list[dict]:
    """summary.json's cells: one per (wd_attn, wd_mlp, other axes), means and stds over its seeds."""
    cells = []
    for setting, members in by_setting(results, keys).items():
        values = dict(zip(keys, setting))
        cell = {"wd_attn": float(values[WD_ATTN]), "wd_mlp": float(values[WD_MLP]),
                **{k: v for k, v in values.items() if k not in (WD_ATTN, WD_MLP)},
                "seeds": [r.values.get("seed") for r in members]}
        cell["total_decay_attn"] = mean_std([total_decay(r.record, "attn") for r in members])[0]
        cell["val_ppl_mean"], cell["val_ppl_std"] = mean_std([r.record.get("val_ppl") for r in members])
        test = [r.extra.get("test_eval_ppl") for r in members] if eval_split == "test" else []
        cell["test_ppl_mean"], cell["test_ppl_std"] = mean_std(test)
        for product in PRODUCTS:
            for metric in ("rank", "effective_rank", "balance"):
                cell[f"{product}_{metric}_mean"] = float(np.mean([r.table.means()[product][metric] for r in members]))
            cell[f"{product}_rank_std"] = mean_std([r.table.means()[product]["rank"] for r in members])[1]
        cells.append(cell)
    return cells


def _column(cells: list[dict], wd_mlp: float, key: str) -> tuple[list[float], list[float]]:
    """(wd_attn values, key's values) of the cells at this wd_mlp, in wd_attn order."""
    chosen = sorted((c for c in cells if c["wd_mlp"] == wd_mlp), key=lambda c: c["wd_attn"])
    return [c["wd_attn"] for c in chosen], [c[key] for c in chosen]


def _checks(cells, wd_attn, wd_mlp, cfg: Config, ppl_key: str) -> list[Check]:
    checks = []
    for product in PRODUCTS:
        details, ok = [], True
        for mlp in wd_mlp:
            xs, ranks = _column(cells, mlp, f"{product}_rank_mean")
            falls = ranks[-1] <= (1 - cfg.rank_drop_min) * ranks[0] and monotone(ranks, decreasing=True, slack=0.02)
            ok &= falls
            details.append(f"wd_mlp {mlp:g}: {' → '.join(f'{r:.1f}' for r in ranks)} for wd_attn "
                           f"{', '.join(f'{x:g}' for x in xs)}")
        checks.append(Check(f"{product.upper()} rank falls as wd_attn rises", ok, "; ".join(details)))
    details, ok = [], True
    for mlp in wd_mlp:
        xs, ppl = _column(cells, mlp, f"{ppl_key}_mean")
        ok &= math.isfinite(ppl[0]) and ppl[-1] > ppl[0]
        details.append(f"wd_mlp {mlp:g}: {' → '.join(f'{p:.2f}' for p in ppl)}")
    checks.append(Check(f"{ppl_key.replace('_', ' ')} rises with wd_attn at every wd_mlp (Table 1: decay on "
                        "attention hurts, so decoupling it helps)", ok, "; ".join(details)))
    decayed = [c for c in cells if c["wd_attn"] > 0]
    if decayed:
        qk = float(np.mean([c["qk_balance_mean"] for c in decayed]))
        ov = float(np.mean([c["ov_balance_mean"] for c in decayed]))
        checks.append(Check("trained factors near-balanced under decay (‖ABᵀ‖_* ≈ (‖A‖²+‖B‖²)/2)",
                            qk >= cfg.balance_min and ov >= cfg.balance_min,
                            f"mean balance over wd_attn > 0: QK {qk:.3f}, OV {ov:.3f} (threshold "
                            f"{cfg.balance_min:g}; at wd_attn 0: QK "
                            f"{np.mean([c['qk_balance_mean'] for c in cells if c['wd_attn'] == 0] or [np.nan]):.3f})"))
    return checks


def _table1(cells, wd_attn, wd_mlp, ppl_key: str) -> str:
    """The Table 1 analogue: one row per wd_attn, one column per wd_mlp, perplexity mean ± std over seeds."""
    lookup = {(c["wd_attn"], c["wd_mlp"]): c for c in cells}
    lines = [f"**Table 1 analogue: {ppl_key.replace('_', ' ')} (mean ± std over seeds)**", "",
             "| λ_attn (Σ lr·λ_attn) \\ λ_mlp | " + " | ".join(f"{m:g}" for m in wd_mlp) + " |",
             "|---|" + "---|" * len(wd_mlp)]
    for a in wd_attn:
        row = [fmt_mean_std(lookup[(a, m)][f"{ppl_key}_mean"], lookup[(a, m)][f"{ppl_key}_std"])
               if (a, m) in lookup else "missing" for m in wd_mlp]
        lines.append(f"| {_attn_label(cells, a)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _rank_table(cells, wd_attn, wd_mlp, d_head: int) -> str:
    lookup = {(c["wd_attn"], c["wd_mlp"]): c for c in cells}
    lines = [f"**Mean rank of W_QᵀW_K / W_O W_V (of d_head = {d_head}; effective rank in brackets)**", "",
             "| λ_attn (Σ lr·λ_attn) \\ λ_mlp | " + " | ".join(f"{m:g}" for m in wd_mlp) + " |",
             "|---|" + "---|" * len(wd_mlp)]
    for a in wd_attn:
        row = []
        for m in wd_mlp:
            c = lookup.get((a, m))
            row.append("missing" if c is None else
                       f"{c['qk_rank_mean']:.1f} ({c['qk_effective_rank_mean']:.1f}) / "
                       f"{c['ov_rank_mean']:.1f} ({c['ov_effective_rank_mean']:.1f})")
        lines.append(f"| {_attn_label(cells, a)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _attn_label(cells: list[dict], wd_attn: float) -> str:
    """'3 (0.99)': λ_attn and its total decay Σ lr·λ_attn over the run (the same at every wd_mlp)."""
    total = next((c["total_decay_attn"] for c in cells if c["wd_attn"] == wd_attn), float("nan"))
    return f"{wd_attn:g} ({total:.2f})" if math.isfinite(total) else f"{wd_attn:g}"


def _decay_axis(cells: list[dict], wd_mlp: float) -> tuple[list[float], str]:
    """The x values of this wd_mlp's cells in wd_attn order: Σ lr·λ_attn, or λ_attn where a cell lacks it."""
    wd, totals = _column(cells, wd_mlp, "total_decay_attn")
    if all(math.isfinite(t) for t in totals):
        return totals, "total decay Σ lr·λ_attn over the run"
    return wd, "λ_attn (optim.wd_attn)"


def _halving(cells: list[dict], wd_mlp: list[float]) -> dict[str, dict[str, float | None]]:
    """Per wd_mlp ('0.1': ...) and per product metric ('qk_rank', 'ov_effective_rank', ...): the Σ lr·λ_attn at
    which its mean falls to half its value at the smallest λ_attn (None: not within the grid)."""
    out = {}
    for mlp in wd_mlp:
        _, totals = _column(cells, mlp, "total_decay_attn")
        out[f"{mlp:g}"] = {f"{p}_{m}": halving_point(totals, _column(cells, mlp, f"{p}_{m}_mean")[1])
                           if all(math.isfinite(t) for t in totals) else None
                           for p in PRODUCTS for m in ("rank", "effective_rank")}
    return out


def _halving_markdown(halving: dict[str, dict[str, float | None]]) -> str:
    def at(value: float | None) -> str:
        return "not within the grid" if value is None else f"Σ lr·λ_attn ≈ {value:.2f}"

    lines = ["**Where the rank halves** (the total decay at which the mean rank falls to half its value at the "
             "smallest λ_attn, interpolated linearly between cells):", ""]
    for mlp, points in halving.items():
        lines.append(f"- λ_mlp {mlp}: QK rank {at(points['qk_rank'])} (effective rank "
                     f"{at(points['qk_effective_rank'])}); OV rank {at(points['ov_rank'])} (effective rank "
                     f"{at(points['ov_effective_rank'])})")
    return "\n".join(lines)


def _rank_per_head_figure(results: list[CellResult], layers: list[int], mlp: float):
    from matplotlib.figure import Figure as MplFigure

    chosen = {}
    for r in results:  # first seed of every wd_attn at this wd_mlp
        if float(r.values[WD_MLP]) == mlp:
            chosen.setdefault(float(r.values[WD_ATTN]), r)
    chosen = dict(sorted(chosen.items()))
    info = next(iter(chosen.values())).table.info
    fig = MplFigure(figsize=(max(7.0, 0.5 * info.n_heads * len(chosen) / 2 + 3), 2.6 * len(layers)),
                    layout="constrained")
    axes = fig.subplots(len(layers), 2, squeeze=False)
    width = 0.8 / len(chosen)
    heads = np.arange(info.n_heads)
    for row, layer in zip(axes, layers):
        for ax, product in zip(row, PRODUCTS):
            for i, (wd, r) in enumerate(chosen.items()):
                ax.bar(heads + (i - (len(chosen) - 1) / 2) * width, r.table.metrics[product]["rank"][layer],
                       width=width, color=f"C{i}", label=f"λ_attn {wd:g}")
            ax.axhline(info.d_head, color="gray", linestyle="--", linewidth=1)
            ax.set_ylim(0, info.d_head * 1.1)
            ax.set_xticks(heads)
            ax.set_title(f"layer {layer}: {LABELS[product]}")
            ax.set_ylabel("rank")
    for ax in axes[-1]:
        ax.set_xlabel("head")
    axes[0][1].legend(fontsize="small", loc="lower right")
    return fig


def _rank_vs_wd(cells, wd_mlp, d_head: int):
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, product in zip(axes, PRODUCTS):
        for i, mlp in enumerate(wd_mlp):
            xs, xlabel = _decay_axis(cells, mlp)
            _, ranks = _column(cells, mlp, f"{product}_rank_mean")
            _, stds = _column(cells, mlp, f"{product}_rank_std")
            _, eff = _column(cells, mlp, f"{product}_effective_rank_mean")
            ax.errorbar(xs, ranks, yerr=[0 if not math.isfinite(s) else s for s in stds], marker="o",
                        color=f"C{i}", label=f"rank, λ_mlp {mlp:g}")
            ax.plot(xs, eff, "--", marker="s", color=f"C{i}", label=f"effective rank, λ_mlp {mlp:g}")
            if i == 0:
                for x, wd, rank in zip(xs, _column(cells, mlp, "wd_attn")[1], ranks):
                    ax.annotate(f"λ {wd:g}", (x, rank), textcoords="offset points", xytext=(3, 4), fontsize="x-small")
        ax.axhline(d_head, color="gray", linestyle=":", linewidth=1, label=f"d_head = {d_head}")
        ax.set_xlabel(xlabel)
        ax.set_title(f"{LABELS[product]}: mean over layers and heads", color=COLORS[product])
    axes[0].set_ylabel("rank")
    axes[1].legend(fontsize="small")
    return fig


def _ppl_vs_wd(cells, wd_mlp, ppl_key: str):
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for i, mlp in enumerate(wd_mlp):
        xs, xlabel = _decay_axis(cells, mlp)
        _, ppl = _column(cells, mlp, f"{ppl_key}_mean")
        _, std = _column(cells, mlp, f"{ppl_key}_std")
        ax.errorbar(xs, ppl, yerr=[0 if not math.isfinite(s) else s for s in std], marker="o", color=f"C{i}",
                    label=f"λ_mlp {mlp:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ppl_key.replace("_", " "))
    ax.legend(fontsize="small")
    return fig
