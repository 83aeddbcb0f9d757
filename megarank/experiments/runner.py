"""One experiment: its config resolved (file, dot-list overrides, grid-axis overrides), then run and written.

Grid-axis overrides (`grid.axes.optim.wd_attn=[0,3]`, `grid.axes={...}`) go through megarank.sweep.grid's parser
and reach the config as a new GridConfig (dataclasses.replace), so the grid's checks and the experiment's own
run on what the command line asked for; nothing edits a config after it was checked.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

from megarank.errors import MegarankError
from megarank.experiments.registry import experiment
from megarank.experiments.report import is_finished, json_ready, write_result

log = logging.getLogger("megarank")


def load_experiment(name: str, config: str | None = None, overrides: list[str] = ()) -> tuple[ModuleType, object]:
    """(module, checked Config) of experiment `name`, from `config` (default: its paper config) and overrides."""
    from megarank.config.load import load_config
    from megarank.sweep.grid import apply_axis_overrides, parse_axis_overrides

    entry = experiment(name)
    module = entry.load()
    parsed = parse_axis_overrides(overrides)
    cfg = load_config(config or entry.config_path, parsed.rest, schema=module.Config)
    if parsed.axes or parsed.replace:
        if not hasattr(cfg, "grid"):
            raise MegarankError(f"experiment '{name}' has no grid: drop the grid.axes overrides")
        cfg = dataclasses.replace(cfg, grid=apply_axis_overrides(cfg.grid, parsed))  # both __post_init__s run
    return module, cfg


def run_experiment(name: str, config: str | None = None, overrides: list[str] = (), *, force: bool = False,
                   progress: bool = True) -> Path:
    """Run experiment `name` unless its out_dir already holds this config's finished result; returns out_dir."""
    module, cfg = load_experiment(name, config, overrides)
    out_dir = Path(cfg.out_dir)
    if not force and is_finished(out_dir, json_ready(asdict(cfg))):
        log.info("%s: finished result in %s (use --force to rerun)", name, out_dir)
        return out_dir
    start = time.perf_counter()
    result = module.run(cfg, progress=progress)
    summary = write_result(result, out_dir, cfg, time.perf_counter() - start)
    log.info("%s: %s; wrote %s", name, result.verdict, summary.parent / "report.md")
    return out_dir
