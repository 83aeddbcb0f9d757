"""run_grid / `megarank-sweep run` against the cells' own checkpoints and metrics: every cell trained to the end
once, the partial one resumed (not restarted), and a second sweep trains nothing."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

from megarank.sweep import run
from megarank.sweep.cells import FINISHED
from megarank.sweep.cli import main
from tests.helpers import REPO, clean_env, train_steps
from tests.sweep.conftest import write_grid


def test_run_trains_every_cell_and_resumes_the_partial_one(swept):
    assert [cell.name for cell in swept.cells] == ["wd_attn0-seed1", "wd_attn0-seed2", "wd_attn0.1-seed1",
                                                    "wd_attn0.1-seed2"]
    assert [status for _, status in swept.results] == ["finished"] * 4
    for cell in swept.cells:
        assert cell.state == FINISHED and cell.checkpoint_step == 2
        assert train_steps(cell.run_dir) == [1, 2], cell.name
        assert (cell.run_dir / "train.log").is_file()
    log = (swept.partial.run_dir / "train.log").read_text()
    assert "resumed from" in log and "global_step1" in log, log[-2000:]
    assert "resumed from" not in (swept.cells[0].run_dir / "train.log").read_text()


def test_rerun_trains_nothing(swept):
    stamps = {cell.name: (cell.run_dir / "metrics.jsonl").stat().st_mtime_ns for cell in swept.cells}
    proc = subprocess.run([sys.executable, "-m", "megarank.sweep.cli", "run", str(swept.grid_file), "--no-progress"],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "0 trained, 4 already finished, 0 failed" in proc.stderr
    assert {c.name: (c.run_dir / "metrics.jsonl").stat().st_mtime_ns for c in swept.cells} == stamps


def test_a_failing_cell_is_reported_and_the_others_continue(swept, tmp_path, monkeypatch, capsys, caplog):
    """seed1's training exits 3 (a stand-in command, so no real run is spent on it); seed2, a copy of a
    finished cell, is still visited after it (and skipped); the sweep exits 1 naming the failed cell's log."""
    grid_file = write_grid(tmp_path / "grid.yaml", tmp_path / "data", tmp_path / "runs", axes={"seed": [1, 2]})
    shutil.copytree(swept.cells[0].run_dir, tmp_path / "runs" / "seed2")
    monkeypatch.setattr(run, "local_command", lambda cell, nproc: [sys.executable, "-c", "raise SystemExit(3)"])
    caplog.set_level(logging.INFO, logger="megarank")
    assert main(["run", str(grid_file), "--no-progress"]) == 1
    assert f"cell seed1 failed (exit 3); see {tmp_path / 'runs' / 'seed1' / 'train.log'}" in capsys.readouterr().err
    assert "0 trained, 1 already finished, 1 failed" in caplog.text
