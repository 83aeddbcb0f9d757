"""gather_grid / `megarank-sweep gather` against the cells' metrics.jsonl: finished cells tabulated with their
last logged values, a cell never run listed as missing (in gather.json too), a torn final line tolerated; the
decay timescales against the sum over the logged steps."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest

from megarank.sweep import gather_grid, load_grid
from megarank.sweep.cli import main
from tests.helpers import read_metrics
from tests.sweep.conftest import write_grid


def test_gather_tabulates_finished_cells_and_lists_missing_ones(swept, tiny_corpus, tmp_path):
    # a copy of the session's sweep (shared, read-only); seed 3 was never run: two missing cells; a torn final
    # line in one finished cell's metrics
    grid_file = write_grid(tmp_path / "grid.yaml", tiny_corpus, tmp_path / "runs")
    shutil.copytree(swept.cells[0].run_dir.parent, tmp_path / "runs")
    torn = tmp_path / "runs" / swept.cells[0].name / "metrics.jsonl"
    torn.write_text(torn.read_text() + '{"step": 3, "lo')
    gathered = gather_grid(load_grid(grid_file, ["grid.axes.seed=[1,2,3]"]))
    out = tmp_path / "out"
    assert main(["gather", str(grid_file), "--out", str(out), "grid.axes.seed=[1,2,3]"]) == 0
    assert [c.name for c in gathered.missing] == ["wd_attn0-seed3", "wd_attn0.1-seed3"]
    assert [r["cell"] for r in gathered.records] == [c.name for c in swept.cells]
    record = gathered.records[2]
    logged = read_metrics(swept.cells[2].run_dir)
    assert (record["optim.wd_attn"], record["seed"], record["state"], record["step"]) == (0.1, 1, "finished", 2)
    assert record["loss"] == [r["loss"] for r in logged if "loss" in r][-1]
    assert record["val_loss"] == [r["val_loss"] for r in logged if "val_loss" in r][-1]
    assert record["rank/qk_mean"] is not None and record["effective_rank/ov_mean"] is not None
    assert record["val_acc"] is None  # a GPT logs no accuracy

    rows = list(csv.DictReader((out / "gather.csv").open()))
    assert [r["cell"] for r in rows] == [c.name for c in swept.cells]
    assert "val_acc" not in rows[0] and float(rows[2]["loss"]) == record["loss"]
    summary = json.loads((out / "gather.json").read_text())
    assert summary["missing"] == ["wd_attn0-seed3", "wd_attn0.1-seed3"] and summary["finished"] == 4
    assert (out / "gather.png").stat().st_size > 0


def test_gather_carries_each_groups_decay_timescales(swept):
    """Σ lr·λ per group (optim/timescales.py, from the cell's config) against the direct sum over the lr and
    wd/<group> its metrics.jsonl logged each step; τ = 1/(lr_peak·λ) in steps and, by the data size the run
    recorded at step 0, in epochs; no decay: Σ 0 and no τ."""
    from megarank.config import load_config

    gathered = gather_grid(load_grid(swept.grid_file))
    decayed, undecayed = gathered.records[2], gathered.records[0]
    logged = read_metrics(swept.cells[2].run_dir)
    training = [r for r in logged if "loss" in r]
    cfg = load_config(swept.cells[2].run_dir / "config.yaml")
    steps_per_epoch = next(r["steps_per_epoch"] for r in logged if r["step"] == 0)
    assert steps_per_epoch == next(r["train_samples"] for r in logged if r["step"] == 0) / cfg.train.global_batch
    for group in ("attn", "mlp", "other"):
        direct = math.fsum(r["lr"] * r[f"wd/{group}"] for r in training)
        assert decayed[f"sum_lr_wd/{group}"] == pytest.approx(direct, rel=1e-12) and direct > 0
        wd = {"attn": 0.1, "mlp": cfg.optim.wd_mlp, "other": cfg.optim.wd_other}[group]
        assert decayed[f"tau_steps/{group}"] == pytest.approx(1 / (cfg.optim.lr * wd))
        assert decayed[f"tau_epochs/{group}"] == pytest.approx(decayed[f"tau_steps/{group}"] / steps_per_epoch)
    assert undecayed["sum_lr_wd/attn"] == 0 and undecayed["tau_steps/attn"] is None
    assert "sum_lr_wd/attn" in gathered.columns and "tau_epochs/other" in gathered.columns
