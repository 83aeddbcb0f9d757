"""gather_grid / `megarank-sweep gather` against the cells' metrics.jsonl: finished cells tabulated with their
last logged values, a cell never run listed as missing (in gather.json too), a torn final line tolerated."""

from __future__ import annotations

import csv
import json
import shutil

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
