"""What lm-sweep and vit-sweep share: train a grid of runs (megarank-sweep), then per finished cell the rank
analysis of its final checkpoint (megarank-rank's reader and factor trick), then means and stds over seeds.

A cell is one run (one point of the grid); a setting is a cell's values on every axis but `seed`, so the seeds of
one setting are averaged. Cells still missing (a cluster sweep gathered before it finished) are listed, never
silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megarank.analysis.readers import open_source
from megarank.analysis.report import RankTable, analyse
from megarank.analysis.spectra import DEFAULT_ATOL
from megarank.errors import MegarankError
from megarank.sweep import GridConfig, gather_grid, run_grid

SEED_KEY = "seed"


@dataclass
class CellResult:
    values: dict  # axis key -> value
    record: dict  # the sweep's gathered record (final loss, val metrics, ...)
    table: RankTable  # the final checkpoint's per-head rank metrics
    extra: dict  # what the experiment measured on top (e.g. test perplexity)

    def setting(self, keys: list[str]) -> tuple:
        return tuple(self.values[key] for key in keys)


def train_and_analyse(grid: GridConfig, *, run_missing: bool, rtol: float, progress: bool,
                      measure: Callable[[dict], dict] | None = None) -> tuple[list[CellResult], list[str]]:
    """Train the grid's unfinished cells (run_missing) and analyse every finished one; returns (results, names of
    the cells still missing). measure(record) adds per-cell numbers, e.g. a test-split evaluation."""
    if run_missing:
        failed = [cell for cell, status in run_grid(grid, progress=progress) if status == "failed"]
        if failed:
            raise MegarankError(f"{len(failed)} sweep cell(s) failed, first {failed[0].name}: see "
                                f"{Path(failed[0].run_dir) / 'train.log'}")
    gathered = gather_grid(grid)
    results = []
    for record in gathered.records:
        if record.get("state") != "finished":
            continue
        with open_source(record["run_dir"]) as source:
            table = analyse(source, rtol=rtol, atol=DEFAULT_ATOL, progress=False)
        values = {key: record[key] for key in grid.axes}
        results.append(CellResult(values, record, table, measure(record) if measure else {}))
    missing = [cell.name for cell in gathered.missing]
    missing += [r["cell"] for r in gathered.records if r.get("state") != "finished"]
    if not results:
        raise MegarankError(f"no finished cells under {grid.run_root}: run them (run_missing=true, or "
                            "megarank-sweep run / launch) before gathering")
    return results, missing


def perplexity_measure(splits: tuple[str, ...], *, batch_size: int, progress: bool) -> Callable[[dict], dict]:
    """A `measure` for train_and_analyse: megarank-eval's perplexity of the cell's final checkpoint over every
    token of each split, as '<split>_eval_ppl', '<split>_eval_loss' and '<split>_eval_tokens'."""
    from megarank.evaluation import evaluate_checkpoint

    def measure(record: dict) -> dict:
        out = {}
        for split in splits:
            result = evaluate_checkpoint(record["run_dir"], split=split, batch_size=batch_size, progress=progress)
            out |= {f"{split}_eval_ppl": result["ppl"], f"{split}_eval_loss": result["loss"],
                    f"{split}_eval_tokens": result["tokens"]}
        return out

    return measure


def total_decay(record: dict, group: str) -> float | None:
    """Σ lr·λ over the cell's run of a decay group, from its gathered record (megarank/optim/timescales.py);
    'qk' or 'ov' falls back to 'attn', the one group both products share while their decays are equal."""
    for name in (group, "attn") if group in ("qk", "ov") else (group,):
        if f"sum_lr_wd/{name}" in record:
            return record[f"sum_lr_wd/{name}"]
    return None


def halving_point(xs: list[float], ys: list[float]) -> float | None:
    """The x at which y first falls to half of ys[0], linearly interpolated between the grid's points (xs
    rising); None when no point of the grid is at or below half."""
    half = ys[0] / 2
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 <= half:  # y0 > half here (the previous pair did not stop), so y0 > y1
            return x0 + (y0 - half) / (y0 - y1) * (x1 - x0)
    return None


def setting_keys(grid: GridConfig) -> list[str]:
    """The axes that define a setting: every axis but the seed."""
    return [key for key in grid.axes if key != SEED_KEY]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (NaN for a single seed) of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")


def by_setting(results: list[CellResult], keys: list[str]) -> dict[tuple, list[CellResult]]:
    """Cells grouped by setting, settings in sorted order."""
    groups: dict[tuple, list[CellResult]] = {}
    for result in results:
        groups.setdefault(result.setting(keys), []).append(result)
    return dict(sorted(groups.items(), key=lambda item: tuple(_sort_key(v) for v in item[0])))


def _sort_key(value):
    return (0, float(value)) if isinstance(value, (int, float)) else (1, str(value))


def fmt_mean_std(mean: float, std: float, digits: int = 2) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}" if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def monotone(values: list[float], *, decreasing: bool, slack: float = 0.0) -> bool:
    """True when values never move the wrong way by more than slack (relative)."""
    for a, b in zip(values, values[1:]):
        if decreasing and b > a * (1 + slack):
            return False
        if not decreasing and b < a * (1 - slack):
            return False
    return True


def missing_markdown(missing: list[str]) -> str:
    """report.md's line listing the cells left out (empty when none is)."""
    return f"**Missing cells** (not finished, left out): {', '.join(missing)}" if missing else ""
