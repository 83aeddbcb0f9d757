"""qk-ov — beyond the paper: which product's low rank costs a language model perplexity, W_QᵀW_K's or W_O W_V's?
docs/paper.md, "### qk-ov".

The paper decays all of attention at once (Table 1: λ_attn), so its perplexity cost cannot be pinned on either
product. Here the two are decayed apart (optim.wd_qk: W_Q, W_K; optim.wd_ov: W_V, W_O; the MLP's and the
embeddings' decay fixed): the GPT trained over a grid of λ_qk × wd_ov × seeds; per cell the perplexity of the
final checkpoint over every token of the val and test splits (megarank-eval), the per-head rank, effective
rank and balance of both products (megarank-rank), and each product's total decay Σ lr·λ over the run
(megarank/optim/timescales.py, through the sweep's gather). A product's perplexity cost is the relative rise
of perplexity from the cell with no attention decay to the cell that decays that product alone, at the grid's
largest value.

The QK axis is optim.wd_qk or optim.wd_attn with wd_qk left null (which then takes wd_attn); the CPU default
uses the latter. Every cell's logged decay is checked against the cell's values before anything is reported.

The CPU default (configs/experiments/beyond/qk_ov.yaml) sets the decayed value from the theory: a total
decay Σ lr·λ of about 2 over lm_cpu.yaml's schedule, past the ≈ 1 at which the rank falls visibly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megarank.analysis.plots import LABELS
from megarank.analysis.spectra import PRODUCTS
from megarank.errors import MegarankError
from megarank.experiments.report import Check, Figure, Result, Table, timescale_table
from megarank.experiments.sweeps import (by_setting, mean_std, missing_markdown, perplexity_measure, setting_keys,
                                         total_decay, train_and_analyse)
from megarank.sweep import GridConfig
from megarank.sweep.gather import read_records

WD_QK, WD_OV, WD_ATTN = "optim.wd_qk", "optim.wd_ov", "optim.wd_attn"
METRICS = ("rank", "effective_rank", "balance")


def _default_grid() -> GridConfig:
    return GridConfig(base="configs/experiments/paper/lm_cpu.yaml", overrides=["analysis.every=0"],
                      axes={WD_ATTN: [0.0, 6.0], WD_OV: [0.0, 6.0], "seed": [1234]},
                      run_root="runs/paper/qk-ov/cells", nproc=1)


@dataclass
class Config:
    """The grid (wd_qk × wd_ov × seeds), its evaluation and what the report checks."""

    grid: GridConfig = field(default_factory=_default_grid)
    """The runs: a GPT training config and the axes: optim.wd_ov and the QK decay (optim.wd_qk, or
    optim.wd_attn with wd_qk left null), at least two values each; seed averaged over. The other decays are
    the base config's (or grid.overrides')."""
    out_dir: str = "runs/paper/qk-ov"
    """Where report.md, the figures, the CSVs and summary.json go."""
    run_missing: bool = True
    """Train the unfinished cells here before gathering; false only gathers the finished ones (a cluster sweep)."""
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    """Splits whose perplexity over every token megarank-eval measures per cell; the costs compare 'test' when
    it is among them, else 'val'."""
    eval_batch_size: int = 16
    """Sequences per forward pass of those perplexities."""
    rtol: float = 0.01
    """A singular value counts towards the rank above rtol·σ_max (megarank-rank's default)."""
    rank_drop_min: float = 0.1
    """A product's rank 'falls' when decaying it alone leaves it at least this fraction below the undecayed cell."""
    ppl_cost_min: float = 0.005
    """A product's low rank 'costs perplexity' when decaying it alone raises the compared perplexity (test, or
    val without a test split) by at least this fraction over the undecayed cell."""

    def __post_init__(self) -> None:
        if WD_OV not in self.grid.axes or (WD_QK in self.grid.axes) == (WD_ATTN in self.grid.axes):
            raise MegarankError(f"qk-ov: grid.axes must vary {WD_OV} and one of {WD_QK}, {WD_ATTN} (the QK "
                                f"decay), got {', '.join(self.grid.axes) or 'none'}")
        for key in (self.qk_key, WD_OV):
            if len(set(self.grid.axes[key])) < 2:
                raise MegarankError(f"qk-ov: grid.axes.{key} needs at least two values to compare")
        if not self.eval_splits or not set(self.eval_splits) <= {"val", "test"}:
            raise MegarankError(f"qk-ov: eval_splits must name val and/or test, got {self.eval_splits}")
        if not 0 < self.rtol < 1:
            raise MegarankError(f"qk-ov: rtol must be in (0, 1), got {self.rtol}")

    @property
    def qk_key(self) -> str:
        """The axis that sets the QK decay."""
        return WD_QK if WD_QK in self.grid.axes else WD_ATTN

    @property
    def compared(self) -> str:
        """The split whose perplexity the costs compare."""
        return "test" if "test" in self.eval_splits else "val"


def run(cfg: Config, *, progress: bool = True) -> Result:
    measure = perplexity_measure(tuple(cfg.eval_splits), batch_size=cfg.eval_batch_size, progress=False)
    results, missing = train_and_analyse(cfg.grid, run_missing=cfg.run_missing, rtol=cfg.rtol, progress=progress,
                                         measure=measure)
    for r in results:
        _check_applied(r.record, float(r.values[cfg.qk_key]), float(r.values[WD_OV]))
    keys = setting_keys(cfg.grid)
    cells = []
    for setting, members in by_setting(results, keys).items():
        values = dict(zip(keys, setting))
        cell = {"wd_qk": float(values[cfg.qk_key]), "wd_ov": float(values[WD_OV]),
                **{k: v for k, v in values.items() if k not in (cfg.qk_key, WD_OV)},
                "seeds": [r.values.get("seed") for r in members]}
        for product in PRODUCTS:
            cell[f"total_decay_{product}"] = mean_std([total_decay(r.record, product) for r in members])[0]
        for split in cfg.eval_splits:
            cell[f"{split}_ppl"], cell[f"{split}_ppl_std"] = mean_std([r.extra[f"{split}_eval_ppl"] for r in members])
        for product in PRODUCTS:
            for metric in METRICS:
                cell[f"{product}_{metric}"] = float(np.mean([r.table.means()[product][metric] for r in members]))
        cells.append(cell)
    d_head = results[0].table.info.d_head
    corners = _corners(cells)
    split = cfg.compared
    costs = {p: _cost(corners, p, split) for p in PRODUCTS}
    costlier = max(PRODUCTS, key=lambda p: costs[p]) if all(map(math.isfinite, costs.values())) else None
    columns = ("wd_qk", "wd_ov", "seeds", "total_decay_qk", "total_decay_ov", *(f"{s}_ppl" for s in cfg.eval_splits),
               *(f"{p}_{m}" for p in PRODUCTS for m in METRICS))
    rows = sorted(cells, key=lambda c: (c["wd_qk"], c["wd_ov"]))
    markdown = _headline(corners, costs, costlier, d_head, split)
    if missing:
        markdown += "\n\n" + missing_markdown(missing)
    return Result(experiment="qk-ov", title="Beyond the paper: whose low rank costs perplexity, W_QᵀW_K or W_O W_V?",
                  checks=_checks(corners, costs, cfg, split),
                  summary={"cells": cells, "missing": missing, "d_head": d_head, "n_runs": len(results),
                           "compared": split, "ppl_cost": costs, "costlier": costlier},
                  figures=[Figure("grid", f"{split.capitalize()} perplexity, mean rank of W_QᵀW_K and of W_O W_V "
                                  "per cell of λ_qk × λ_ov (effective rank in brackets)",
                                  _figure(cells, d_head, split))],
                  tables=[Table("cells", columns, [{k: c[k] if k != "seeds" else len(c[k]) for k in columns}
                                                   for c in rows],
                                f"Every setting (means over seeds; ranks of d_head = {d_head}; perplexity over every "
                                "token of the split; Σ lr·λ per product over the run)"),
                          timescale_table([r.record for r in results], list(cfg.grid.axes))],
                  markdown=markdown)


def _check_applied(record: dict, wd_qk: float, wd_ov: float) -> None:
    """Refuse a cell whose run did not decay W_Q, W_K at wd_qk and W_V, W_O at wd_ov (its first training
    record's 'wd/qk', 'wd/ov', or 'wd/attn' where the two share a group)."""
    first = next((r for r in read_records(Path(record["run_dir"]) / "metrics.jsonl") if "loss" in r), {})
    applied = (first.get("wd/qk", first.get("wd/attn")), first.get("wd/ov", first.get("wd/attn")))
    if applied != (wd_qk, wd_ov):
        raise MegarankError(f"qk-ov: cell {record['cell']} decayed QK at {applied[0]} and OV at {applied[1]}, not "
                            f"{wd_qk:g} and {wd_ov:g}: with equal wd_qk and wd_ov the optimizer keeps one attn group "
                            "at optim.wd_attn; vary optim.wd_attn (wd_qk null) as the QK axis instead")


def _corners(cells: list[dict]) -> dict[str, dict]:
    """The four cells the checks compare: 'none' (both at their smallest), 'qk' (wd_qk largest alone), 'ov'
    (wd_ov largest alone), 'both'; a corner whose cell is missing is absent."""
    qk_lo, qk_hi = min(c["wd_qk"] for c in cells), max(c["wd_qk"] for c in cells)
    ov_lo, ov_hi = min(c["wd_ov"] for c in cells), max(c["wd_ov"] for c in cells)
    lookup = {(c["wd_qk"], c["wd_ov"]): c for c in cells}
    wanted = {"none": (qk_lo, ov_lo), "qk": (qk_hi, ov_lo), "ov": (qk_lo, ov_hi), "both": (qk_hi, ov_hi)}
    return {name: lookup[key] for name, key in wanted.items() if key in lookup}


def _cost(corners: dict[str, dict], product: str, split: str) -> float:
    """Relative rise of the split's perplexity from decaying neither product to decaying `product` alone; NaN if
    a corner is missing."""
    if "none" not in corners or product not in corners:
        return float("nan")
    return corners[product][f"{split}_ppl"] / corners["none"][f"{split}_ppl"] - 1


def _checks(corners: dict[str, dict], costs: dict[str, float], cfg: Config, split: str) -> list[Check]:
    if not {"none", "qk", "ov"} <= set(corners):
        return [Check("the grid's undecayed cell and each product decayed alone have finished", False,
                      f"finished corners: {', '.join(sorted(corners)) or 'none'}")]
    none = corners["none"]
    checks = []
    for product in PRODUCTS:
        other = "ov" if product == "qk" else "qk"
        own, theirs = corners[product], corners[other]
        falls = own[f"{product}_rank"] <= (1 - cfg.rank_drop_min) * none[f"{product}_rank"]
        checks.append(Check(
            f"decaying {LABELS[product]} alone lowers its rank",
            falls,
            f"{none[f'{product}_rank']:.1f} → {own[f'{product}_rank']:.1f} (effective "
            f"{none[f'{product}_effective_rank']:.1f} → {own[f'{product}_effective_rank']:.1f}) at Σ lr·λ "
            f"{own[f'total_decay_{product}']:.2f}; decaying {other.upper()} alone leaves it at "
            f"{theirs[f'{product}_rank']:.1f}"))
    for product in PRODUCTS:
        checks.append(Check(
            f"the low rank of {LABELS[product]} costs {split} perplexity (≥ {100 * cfg.ppl_cost_min:g} %)",
            costs[product] >= cfg.ppl_cost_min,
            f"{split} ppl {none[f'{split}_ppl']:.2f} → {corners[product][f'{split}_ppl']:.2f} "
            f"({100 * costs[product]:+.1f} %) decaying {product.upper()} alone"
            + (f"; val {none['val_ppl']:.2f} → {corners[product]['val_ppl']:.2f}" if split != "val" else "")))
    return checks


def _headline(corners: dict[str, dict], costs: dict[str, float], costlier: str | None, d_head: int,
              split: str) -> str:
    if costlier is None:
        return "**Headline:** a corner of the grid is missing, so the two products' costs cannot be compared."
    other = "ov" if costlier == "qk" else "qk"
    text = (f"**Headline:** decaying {costlier.upper()} alone costs {100 * costs[costlier]:+.1f} % {split} "
            f"perplexity, {other.upper()} alone {100 * costs[other]:+.1f} %")
    if "both" in corners:
        both = corners["both"][f"{split}_ppl"] / corners["none"][f"{split}_ppl"] - 1
        text += (f", both {100 * both:+.1f} % (QK rank {corners['both']['qk_rank']:.1f}, OV rank "
                 f"{corners['both']['ov_rank']:.1f} of {d_head})")
    return text + "."


def _figure(cells: list[dict], d_head: int, split: str):
    from matplotlib.figure import Figure as MplFigure

    qks = sorted({c["wd_qk"] for c in cells})
    ovs = sorted({c["wd_ov"] for c in cells})
    lookup = {(c["wd_qk"], c["wd_ov"]): c for c in cells}
    fig = MplFigure(figsize=(13, 4), layout="constrained")
    panels = ((f"{split}_ppl", f"{split} perplexity", None), ("qk_rank", LABELS["qk"] + " rank", "qk_effective_rank"),
              ("ov_rank", LABELS["ov"] + " rank", "ov_effective_rank"))
    for ax, (key, title, bracket) in zip(fig.subplots(1, 3), panels):
        grid = np.array([[lookup[(q, o)][key] if (q, o) in lookup else np.nan for o in ovs] for q in qks])
        image = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto",
                          **({} if bracket is None else {"vmin": 0, "vmax": d_head}))
        for i, q in enumerate(qks):
            for j, o in enumerate(ovs):
                if (q, o) in lookup:
                    text = f"{grid[i, j]:.1f}" + (f"\n({lookup[(q, o)][bracket]:.1f})" if bracket else "")
                    ax.text(j, i, text, ha="center", va="center", color="white", fontsize="small")
        ax.set_xticks(range(len(ovs)), [f"{o:g}" for o in ovs])
        ax.set_yticks(range(len(qks)), [f"{q:g}" for q in qks])
        ax.set_xlabel("λ_ov (optim.wd_ov)")
        ax.set_ylabel("λ_qk (optim.wd_qk)")
        ax.set_title(title)
        fig.colorbar(image, ax=ax)
    return fig
