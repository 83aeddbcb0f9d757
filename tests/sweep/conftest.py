"""A 2×2 grid of the tiny GPT (optim.wd_attn × seed, 2 steps per cell, 1 process), trained once per session
through run_grid, one cell of it first pre-trained to step 1 so the grid has a partial cell to resume. Under
pytest-xdist it is trained once for both workers (tests/runs.py `once`), and read-only to tests: a test that
changes a cell copies the runs first."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from megarank.sweep import Cell, expand, load_grid, run_grid
from tests.helpers import REPO, TINY, clean_env
from tests.runs import once


def write_grid(path: Path, corpus: Path, run_root: Path, axes: dict | None = None) -> Path:
    """A grid file over the tiny GPT: validation and the attention rank logged at the last step (2)."""
    grid = {"base": str(REPO / "configs/default.yaml"),
            "overrides": [*TINY, f"data.path={corpus}", "train.max_steps=2", "train.eval_every=2",
                          "train.eval_batches=1"],
            "axes": axes or {"optim.wd_attn": [0, 0.1], "seed": [1, 2]},
            "run_root": str(run_root)}
    path.write_text(yaml.safe_dump({"description": "other top-level keys are ignored", "grid": grid}))
    return path


@dataclass
class Swept:
    grid_file: Path
    cells: list[Cell]
    results: list[tuple[Cell, str]]
    partial: Cell
    """The cell trained to step 1 before the sweep."""


@pytest.fixture(scope="session")
def swept(tiny_corpus, session_dir) -> Swept:
    def sweep(root: Path) -> None:
        grid = load_grid(write_grid(root / "grid.yaml", tiny_corpus, root / "runs"))
        partial = expand(grid)[1]
        subprocess.run([*_train(partial), "train.max_steps=1"], cwd=REPO, env=clean_env(), check=True,
                       capture_output=True)
        assert partial.state == "partial"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OMP_NUM_THREADS", "1")
            results = run_grid(grid, progress=False)
        (root / "results.json").write_text(json.dumps([[cell.name, status] for cell, status in results]))

    root = once(session_dir, "sweep", sweep)
    cells = expand(load_grid(root / "grid.yaml"))
    by_name = {cell.name: cell for cell in cells}
    results = [(by_name[name], status) for name, status in json.loads((root / "results.json").read_text())]
    return Swept(grid_file=root / "grid.yaml", cells=cells, results=results, partial=cells[1])


def _train(cell: Cell) -> list[str]:
    return [sys.executable, "-m", "megarank.train", cell.base, *cell.overrides, "train.progress=false"]
