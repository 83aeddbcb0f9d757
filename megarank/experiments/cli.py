"""`megarank-exp`: run one of the paper's experiments, or all of them.

    megarank-exp NAME [key=value ...] [--config FILE] [--force]    one experiment -> runs/paper/NAME/
    megarank-exp reproduce [--force]                                every CPU default, then runs/paper/REPORT.md

NAME's config is configs/experiments/paper/<name>.yaml unless --config names another (a preset such as
lm_sweep_16xa100.yaml). A finished experiment (summary.json of the same config) is not rerun unless --force.
A user error prints one line, `error: ...`, and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from megarank.errors import MegarankError
from megarank.experiments import EXPERIMENTS, default_config_path, experiment_module
from megarank.experiments.report import is_finished, json_ready, write_result

log = logging.getLogger("megarank")


def load_experiment(name: str, config: str | None = None, overrides: list[str] = ()):
    """(module, resolved Config) of experiment `name`."""
    from megarank.config.load import load_config

    module = experiment_module(name)
    rest, axes, replace = _split_axis_overrides(overrides)
    cfg = load_config(config or default_config_path(name), rest, schema=module.Config)
    if axes or replace:
        if not hasattr(cfg, "grid"):
            raise MegarankError(f"experiment '{name}' has no grid: drop the grid.axes overrides")
        if replace:
            cfg.grid.axes = {}
        cfg.grid.axes.update(axes)
        cfg.__post_init__()  # re-check what depends on the axes
    return module, cfg


def _split_axis_overrides(overrides) -> tuple[list[str], dict[str, list], bool]:
    """Axis overrides apart: `grid.axes.optim.wd_attn=[0,3]` names the training key 'optim.wd_attn', which
    OmegaConf's dot-list would split into nested keys. `grid.axes={...}` replaces the axes wholesale (a merge
    could only add to them); returns (other overrides, axes to set, whether to clear the config's axes)."""
    from omegaconf import OmegaConf

    rest, axes, replace = [], {}, False
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key.startswith("grid.axes"):
            rest.append(item)
            continue
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]))["value"]
        if key == "grid.axes":
            if not isinstance(parsed, dict):
                raise MegarankError(f"grid.axes={value}: give a mapping, e.g. grid.axes={{optim.wd_attn: [0, 1]}}")
            replace = True
            axes.update({k: v if isinstance(v, list) else [v] for k, v in parsed.items()})
        elif key.startswith("grid.axes."):
            axes[key[len("grid.axes."):]] = parsed if isinstance(parsed, list) else [parsed]
        else:
            rest.append(item)
    return rest, axes, replace


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megarank-exp", description="Reproduce a figure or table of the paper.")
    parser.add_argument("name", choices=(*EXPERIMENTS, "reproduce"), help="experiment, or 'reproduce' for all")
    parser.add_argument("overrides", nargs="*", help="OmegaConf dot-list overrides, e.g. steps=200")
    parser.add_argument("--config", default=None, help="experiment YAML (default configs/experiments/paper/NAME.yaml)")
    parser.add_argument("--force", action="store_true", help="rerun even when a finished result exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[megarank] %(message)s")
    try:
        if args.name == "reproduce":
            from megarank.experiments.reproduce import reproduce

            reproduce(force=args.force, progress=not args.no_progress)
        else:
            run_experiment(args.name, args.config, args.overrides, force=args.force, progress=not args.no_progress)
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
