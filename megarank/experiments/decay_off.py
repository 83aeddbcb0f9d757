"""decay-off — beyond the paper: does the attention rank come back when weight decay on attention is switched
off partway through training, and does perplexity improve? (Jacobs, Zhou & Burkholz 2025 report that switching
decay off late helps.) docs/paper.md, "### decay-off".

Two kinds of run of the GPT from one base config, over the grid's optim.wd_schedule axis: the control keeps
attention's decay for the whole run ('constant'); the others change it partway, as the grid's overrides set
(the CPU default: 'step' to wd_final_ratio 0 at wd_schedule_start, for the attn group only). Up to the switch
the runs are the same run. Per run: the mean rank and effective rank of W_QᵀW_K and W_O W_V over training, from
the live rank records the training loop writes to metrics.jsonl every analysis.every steps
(megarank/analysis/live.py); the decay each step applied ('wd/attn' there), which dates the switch; the final
checkpoint's rank (megarank-rank) and its perplexity over every token of the val split (megarank-eval).

The CPU default (configs/experiments/beyond/decay_off.yaml) sets λ_attn from the theory: a total decay Σ lr·λ of
about 2 by the switch, so the rank is well down when the decay stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from megarank.analysis.plots import LABELS
from megarank.analysis.spectra import PRODUCTS
from megarank.errors import MegarankError
from megarank.experiments.report import Check, Figure, Result, Table, timescale_table
from megarank.experiments.sweeps import (CellResult, missing_markdown, perplexity_measure, total_decay,
                                         train_and_analyse)
from megarank.sweep import GridConfig
from megarank.sweep.gather import read_records

SCHEDULE = "optim.wd_schedule"
CONTROL = "constant"
CURVES = tuple(f"{metric}/{product}_mean" for product in PRODUCTS for metric in ("rank", "effective_rank"))
"""The live records' keys this experiment plots (megarank/analysis/live.py)."""


def _default_grid() -> GridConfig:
    return GridConfig(base="configs/experiments/paper/lm_cpu.yaml",
                      overrides=["optim.wd_attn=9.0", "analysis.every=50", "optim.wd_schedule_start=300",
                                 "optim.wd_final_ratio=0", "optim.wd_schedule_groups=[attn]"],
                      axes={SCHEDULE: [CONTROL, "step"], "seed": [1234]},
                      run_root="runs/paper/decay-off/cells", nproc=1)


@dataclass
class Config:
    """The runs (the control and the switched ones), their evaluation and what the report checks."""

    grid: GridConfig = field(default_factory=_default_grid)
    """The runs: a GPT training config with analysis.every > 0 (the live rank records), attention decay and the
    switch in its overrides, and optim.wd_schedule as an axis holding 'constant' (the control) and at least one
    schedule that changes the decay; other axes (seed) are compared per value, control against switched."""
    out_dir: str = "runs/paper/decay-off"
    """Where report.md, the figures, the CSVs and summary.json go."""
    run_missing: bool = True
    """Train the unfinished runs here before gathering; false only gathers the finished ones."""
    eval_batch_size: int = 16
    """Sequences per forward pass of the val perplexity."""
    rtol: float = 0.01
    """A singular value counts towards the final checkpoint's rank above rtol·σ_max (the live records use the
    run's own analysis.rtol)."""
    recover_min: float = 0.1
    """The rank 'recovers' when its final value in the switched run is at least this fraction above its value
    at the switch."""

    def __post_init__(self) -> None:
        values = self.grid.axes.get(SCHEDULE, [])
        if CONTROL not in values or len(set(values)) < 2:
            raise MegarankError(f"decay-off: grid.axes.{SCHEDULE} must hold '{CONTROL}' (the control) and a "
                                f"schedule that switches the decay, got {values or 'no such axis'}")
        if not 0 < self.rtol < 1:
            raise MegarankError(f"decay-off: rtol must be in (0, 1), got {self.rtol}")


@dataclass
class Curves:
    """One run's records over training, read from its metrics.jsonl."""

    steps: list[int]
    """The steps of the live rank records."""
    values: dict[str, list[float]]
    """CURVES key -> its value at each of those steps."""
    wd_steps: list[int]
    """The steps of the training records."""
    wd: list[float]
    """The attention decay each of those steps applied ('wd/attn', or 'wd/qk' where the products split)."""

    def at(self, key: str, step: int) -> float:
        """The last live value of key at or before step."""
        index = max(i for i, s in enumerate(self.steps) if s <= step)
        return self.values[key][index]


def read_curves(run_dir: str | Path) -> Curves:
    """The live rank records and the logged attention decay of a run (a resumed run's repeated step: the last)."""
    ranks, decay = {}, {}
    for record in read_records(Path(run_dir) / "metrics.jsonl"):
        if "step" not in record:
            continue
        if all(key in record for key in CURVES):
            ranks[record["step"]] = [record[key] for key in CURVES]
        wd = record.get("wd/attn", record.get("wd/qk"))
        if "loss" in record and wd is not None:
            decay[record["step"]] = wd
    if not ranks:
        raise MegarankError(f"decay-off: {run_dir}/metrics.jsonl has no live rank records: train with "
                            "analysis.every > 0 (the grid's overrides)")
    steps = sorted(ranks)
    return Curves(steps, {key: [ranks[s][i] for s in steps] for i, key in enumerate(CURVES)},
                  sorted(decay), [decay[s] for s in sorted(decay)])


def switch_step(curves: Curves) -> int | None:
    """N, the optimizer steps taken before the logged attention decay first changed (None: it never did).
    Training records count steps from 1, so the record of step N+1 is the first with the changed decay, and the
    live records up to step N were taken before the change."""
    return next((s - 1 for s, wd in zip(curves.wd_steps, curves.wd) if wd != curves.wd[0]), None)


def run(cfg: Config, *, progress: bool = True) -> Result:
    results, missing = train_and_analyse(cfg.grid, run_missing=cfg.run_missing, rtol=cfg.rtol, progress=progress,
                                         measure=perplexity_measure(("val",), batch_size=cfg.eval_batch_size,
                                                                    progress=False))
    others = [key for key in cfg.grid.axes if key != SCHEDULE]
    runs = [_run_row(r, others) for r in results]
    controls = {tuple(row[k] for k in others): row for row in runs if row["schedule"] == CONTROL}
    pairs = [(controls[tuple(row[k] for k in others)], row) for row in runs
             if row["schedule"] != CONTROL and tuple(row[k] for k in others) in controls]
    _add_switch_values(pairs)
    d_head = results[0].table.info.d_head
    columns = ("schedule", *others, "switch_step", "total_decay_attn", "val_ppl",
               *(f"final_{p}_{m}" for p in PRODUCTS for m in ("rank", "effective_rank")),
               *(f"switch_{p}_{m}" for p in PRODUCTS for m in ("rank", "effective_rank")))
    curve_rows = [{"schedule": row["schedule"], **{k: row[k] for k in others}, "step": step,
                   **{key: row["curves"].values[key][i] for key in CURVES}}
                  for row in runs for i, step in enumerate(row["curves"].steps)]
    markdown = _markdown(pairs, d_head)
    if missing:
        markdown += "\n\n" + missing_markdown(missing)
    return Result(experiment="decay-off", title="Beyond the paper: attention decay switched off partway",
                  checks=_checks(pairs, cfg),
                  summary={"runs": [{k: v for k, v in row.items() if k != "curves"} for row in runs],
                           "pairs": [[c["cell"], s["cell"]] for c, s in pairs], "missing": missing,
                           "d_head": d_head, "n_runs": len(results)},
                  figures=[Figure("rank_over_training", "Mean rank (solid) and effective rank (dashed) of W_QᵀW_K "
                                  "and W_O W_V over training, from the live records: the control (gray) and the "
                                  "run whose attention decay changes (colour) at the dotted line",
                                  _figure(runs, d_head))],
                  tables=[Table("runs", columns, [{k: row.get(k) for k in columns} for row in runs],
                                f"Every run (ranks of d_head = {d_head}; val perplexity over every token; 'switch' "
                                "values: the last live record at or before the switch step of the pair)"),
                          Table("curves", ("schedule", *others, "step", *CURVES), curve_rows,
                                "The live rank records of every run", in_report=False),
                          timescale_table([r.record for r in results], list(cfg.grid.axes))],
                  markdown=markdown)


def _run_row(result: CellResult, others: list[str]) -> dict:
    curves = read_curves(result.record["run_dir"])
    row = {"schedule": result.values[SCHEDULE], **{k: result.values[k] for k in others}, "cell": result.record["cell"],
           "curves": curves, "switch_step": switch_step(curves), "total_decay_attn": total_decay(result.record, "attn"),
           "val_ppl": result.extra["val_eval_ppl"]}
    means = result.table.means()
    for product in PRODUCTS:
        for metric in ("rank", "effective_rank"):
            row[f"final_{product}_{metric}"] = means[product][metric]
    return row


def _pair_switch(control: dict, switched: dict) -> int:
    """The step the pair parts at: the switched run's switch (its last step when it never switches)."""
    return switched["switch_step"] if switched["switch_step"] is not None else switched["curves"].wd_steps[-1]


def _add_switch_values(pairs: list[tuple[dict, dict]]) -> None:
    """Each paired run's 'switch_<product>_<metric>': its live value at the pair's switch step."""
    for control, switched in pairs:
        step = _pair_switch(control, switched)
        for product in PRODUCTS:
            for metric in ("rank", "effective_rank"):
                for row in (control, switched):
                    row[f"switch_{product}_{metric}"] = row["curves"].at(f"{metric}/{product}_mean", step)


def _checks(pairs: list[tuple[dict, dict]], cfg: Config) -> list[Check]:
    if not pairs:
        return [Check("a control and a switched run have finished", False, "no finished pair")]
    checks = [Check("the switched run's attention decay changes partway and the control's never does",
                    all(s["switch_step"] is not None and c["switch_step"] is None for c, s in pairs),
                    "; ".join(f"{s['cell']}: from step {s['switch_step']}" for _, s in pairs))]
    same = all(c["curves"].at(key, _pair_switch(c, s)) == s["curves"].at(key, _pair_switch(c, s))
               for c, s in pairs for key in CURVES)
    checks.append(Check("before the switch the two runs are one run (equal live ranks)", same,
                        "; ".join(f"QK rank at step {_pair_switch(c, s)}: {c['switch_qk_rank']:.2f} and "
                                  f"{s['switch_qk_rank']:.2f}" for c, s in pairs)))
    for product in PRODUCTS:
        ok, details = True, []
        for control, switched in pairs:
            at_switch, final = switched[f"switch_{product}_rank"], switched[f"final_{product}_rank"]
            ok &= final >= (1 + cfg.recover_min) * at_switch
            details.append(f"{at_switch:.1f} at step {_pair_switch(control, switched)} → {final:.1f} at the end "
                           f"(control {control[f'final_{product}_rank']:.1f}; effective "
                           f"{switched[f'switch_{product}_effective_rank']:.1f} → "
                           f"{switched[f'final_{product}_effective_rank']:.1f}, control "
                           f"{control[f'final_{product}_effective_rank']:.1f})")
        checks.append(Check(f"{LABELS[product]} rank recovers once the decay is off (≥ {100 * cfg.recover_min:g} % "
                            "above its value at the switch)", ok, "; ".join(details)))
    checks.append(Check("val perplexity is lower with the decay switched off than with it kept",
                        all(s["val_ppl"] < c["val_ppl"] for c, s in pairs),
                        "; ".join(f"{s['val_ppl']:.2f} against {c['val_ppl']:.2f} kept" for c, s in pairs)))
    return checks


def _markdown(pairs: list[tuple[dict, dict]], d_head: int) -> str:
    lines = []
    for control, switched in pairs:
        step = _pair_switch(control, switched)
        lines.append(
            f"**{switched['cell']}** against **{control['cell']}**: decay off from step {step}; Σ lr·λ_attn "
            f"{switched['total_decay_attn']:.2f} against {control['total_decay_attn']:.2f}. QK rank "
            f"{switched['switch_qk_rank']:.1f} → {switched['final_qk_rank']:.1f} (kept: "
            f"{control['final_qk_rank']:.1f}), OV rank {switched['switch_ov_rank']:.1f} → "
            f"{switched['final_ov_rank']:.1f} (kept: {control['final_ov_rank']:.1f}) of {d_head}; val ppl "
            f"{switched['val_ppl']:.2f} (kept: {control['val_ppl']:.2f}, "
            f"{100 * (switched['val_ppl'] / control['val_ppl'] - 1):+.1f} %).")
    return "\n\n".join(lines)


def _figure(runs: list[dict], d_head: int):
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    switched = [row for row in runs if row["schedule"] != CONTROL]
    for ax, product in zip(axes, PRODUCTS):
        for row in runs:
            control = row["schedule"] == CONTROL
            color = "gray" if control else f"C{switched.index(row)}"
            label = f"{row['cell']}"
            curves = row["curves"]
            ax.plot(curves.steps, curves.values[f"rank/{product}_mean"], "-o", color=color, markersize=3,
                    label=f"rank, {label}")
            ax.plot(curves.steps, curves.values[f"effective_rank/{product}_mean"], "--", color=color,
                    label=f"effective, {label}")
            if not control and row["switch_step"] is not None:
                ax.axvline(row["switch_step"], color=color, linestyle=":", linewidth=1)
        ax.axhline(d_head, color="gray", linestyle=":", linewidth=1)
        ax.set_ylim(0, d_head * 1.1)
        ax.set_xlabel("step")
        ax.set_title(f"{LABELS[product]}: mean over layers and heads")
    axes[0].set_ylabel("rank")
    axes[1].legend(fontsize="x-small")
    return fig


