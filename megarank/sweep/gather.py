"""Tabulate a grid from whatever cells have run: one record per finished or partial cell, the rest missing.

A record holds the cell's axis values (under their full keys, e.g. 'optim.wd_attn'), 'cell', 'run_dir',
'state' (finished | partial), 'step' (last training record), and the last logged value of each metric in
METRICS (None when the run never logged it), read from <run_dir>/metrics.jsonl; a torn final line (a run
killed mid-write) is skipped. Each record also carries the cell's decay timescales per optimizer group
(megarank/optim/timescales.py, from the cell's config.yaml and the data size its metrics.jsonl records):
'sum_lr_wd/<group>' (Σ lr·λ over the run), 'tau_steps/<group>' and 'tau_epochs/<group>' (1/(lr_peak·λ); None
where infinite, tau_epochs None for a run that did not record its data size). write_gather turns that into gather.csv, gather.json (with the missing cells)
and gather.png: the final metric against the first axis, one line per combination of the other axes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from megarank.errors import MegarankError
from megarank.files import atomic_write_json
from megarank.sweep.cells import MISSING, PARTIAL, Cell, expand
from megarank.sweep.grid import GridConfig

# Last value of each, in column order: final training loss, validation (GPT: loss, perplexity; ViT: accuracy),
# the attention rank logged every analysis.every steps (megarank/analysis/live.py).
METRICS = ("loss", "val_loss", "val_ppl", "val_acc", "rank/qk_mean", "rank/ov_mean", "effective_rank/qk_mean",
           "effective_rank/ov_mean", "balance/qk_mean", "balance/ov_mean")
# Plotted against the first axis: the first of these any record has, then the ranks.
_PRIMARY = ("val_loss", "val_acc", "loss")
_PLOTTED_RANKS = ("rank/qk_mean", "rank/ov_mean")
TIMESCALE_PREFIXES = ("sum_lr_wd/", "tau_steps/", "tau_epochs/")


@dataclass
class Gathered:
    """The grid's results so far."""

    records: list[dict]
    """One per finished or partial cell, in grid order (see the module docstring for the keys)."""
    missing: list[Cell]
    """Cells with no complete checkpoint yet."""
    axes: list[str]
    """The grid's axis keys, in order (the records' first columns)."""

    @property
    def columns(self) -> tuple[str, ...]:
        """CSV columns: axes, cell, run_dir, state, step, the metrics some record has, then the timescales."""
        logged = [m for m in METRICS if any(r[m] is not None for r in self.records)]
        timescales = dict.fromkeys(k for r in self.records for k in r if k.startswith(TIMESCALE_PREFIXES))
        return (*self.axes, "cell", "run_dir", "state", "step", *logged, *timescales)


def read_records(path: Path) -> list[dict]:
    """The JSON records of a metrics.jsonl, skipping lines that do not parse (a torn final write)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def cell_record(cell: Cell, state: str) -> dict:
    logged = read_records(cell.run_dir / "metrics.jsonl")
    training = [r for r in logged if "loss" in r]
    record = {**cell.values, "cell": cell.name, "run_dir": str(cell.run_dir), "state": state,
              "step": training[-1]["step"] if training else None}
    for metric in METRICS:
        record[metric] = next((r[metric] for r in reversed(logged) if metric in r), None)
    return record | cell_timescales(cell.run_dir, logged)


def cell_timescales(run_dir: Path, logged: list[dict]) -> dict:
    """The run's timescale columns (see the module docstring); {} for a run without a readable config.yaml."""
    from megarank.config import load_config
    from megarank.optim.timescales import decay_timescales, timescale_columns

    try:
        cfg = load_config(run_dir / "config.yaml")
    except (OSError, MegarankError):
        return {}
    steps_per_epoch = next((r["steps_per_epoch"] for r in logged if "steps_per_epoch" in r), None)
    return timescale_columns(decay_timescales(cfg.optim, cfg.train.max_steps, steps_per_epoch))


def gather_grid(grid: GridConfig) -> Gathered:
    """A record for every cell with a complete checkpoint, and the list of cells without one."""
    records, missing = [], []
    for cell in expand(grid):
        state = cell.state
        if state == MISSING:
            missing.append(cell)
        else:
            records.append(cell_record(cell, state))
    return Gathered(records=records, missing=missing, axes=list(grid.axes))


def write_gather(gathered: Gathered, grid: GridConfig, out: Path, *, plot: bool = True) -> list[Path]:
    """gather.csv, gather.json and (with a plot-able grid) gather.png in out; returns the paths written."""
    from megarank.analysis.report import json_ready, write_csv, write_figure

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "gather.csv", out / "gather.json"]
    write_csv(written[0], gathered.columns, [{c: r[c] for c in gathered.columns} for r in gathered.records])
    summary = {"grid": asdict(grid), "cells": len(gathered.records) + len(gathered.missing),
               "finished": sum(r["state"] != PARTIAL for r in gathered.records),
               "partial": [r["cell"] for r in gathered.records if r["state"] == PARTIAL],
               "missing": [cell.name for cell in gathered.missing], "records": gathered.records}
    atomic_write_json(written[1], json_ready(summary), indent=1)
    figure = final_metric_figure(gathered) if plot else None
    if figure is not None:
        written.append(out / "gather.png")
        write_figure(written[-1], figure)
    return written


def final_metric_figure(gathered: Gathered):
    """Finished cells' final metric (and attention ranks) vs the first axis, one line per combination of the
    other axes; None when there is no axis or nothing finished to plot."""
    finished = [r for r in gathered.records if r["state"] != PARTIAL]
    primary = next((m for m in _PRIMARY if any(r[m] is not None for r in finished)), None)
    if not gathered.axes or primary is None:
        return None
    from matplotlib.figure import Figure

    metrics = [primary, *(m for m in _PLOTTED_RANKS if any(r[m] is not None for r in finished))]
    first, others = gathered.axes[0], gathered.axes[1:]
    xs = list(dict.fromkeys(json.dumps(r[first]) for r in finished))  # axis values in grid order, categorical
    lines: dict[str, list[dict]] = {}
    for r in finished:
        lines.setdefault(", ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in others) or first, []).append(r)
    fig = Figure(figsize=(4.5 * len(metrics) + 2, 3.6), layout="constrained")
    axs = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axs, metrics):
        for label, rows in lines.items():
            points = [(xs.index(json.dumps(r[first])), r[metric]) for r in rows if r[metric] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set_xticks(range(len(xs)), [json.loads(x) for x in xs])
        ax.set_xlabel(first)
        ax.set_ylabel(f"final {metric}")
        ax.grid(alpha=0.3)
    if others:
        fig.legend(*axs[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    return fig
