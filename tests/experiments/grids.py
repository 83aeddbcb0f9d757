"""A grid experiment (qk-ov, qk-norm, decay-off) run at a tiny size through `megarank-exp`, as its test
fixtures need it: one process a cell, configs/default.yaml as the base, cells under root/cells and the report
under root/out."""

from __future__ import annotations

from pathlib import Path

import yaml

from megarank.experiments.cli import main as exp_main


def run_grid_experiment(name: str, root: Path, overrides: list[str], axes: dict, **settings) -> Path:
    """Write root/<name>.yaml (the grid, then the experiment's own settings) and run the experiment on it;
    returns root."""
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "grid": {"base": "configs/default.yaml", "overrides": overrides, "axes": axes,
                 "run_root": str(root / "cells"), "nproc": 1},
        "out_dir": str(root / "out"), **settings}))
    assert exp_main([name, "--config", str(config), "--no-progress"]) == 0
    return root
