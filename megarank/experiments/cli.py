"""`megarank-exp`: run one of the paper's experiments, or all of them.

    megarank-exp NAME [key=value ...] [--config FILE] [--force]    one experiment -> runs/paper/NAME/
    megarank-exp reproduce [--force]                                every CPU default, then runs/paper/REPORT.md

NAME's config is configs/experiments/paper/<name>.yaml unless --config names another (a preset such as
lm_sweep_16xa100.yaml). A finished experiment (summary.json of the same config) is not rerun unless --force.
A user error prints one line, `error: ...`, and exits 2; `reproduce` exits 1 when an experiment failed (it is a
row of REPORT.md, which is written anyway).
"""

from __future__ import annotations

import argparse
import logging
import sys

from megarank.errors import MegarankError
from megarank.experiments.registry import NAMES
from megarank.experiments.reproduce import reproduce
from megarank.experiments.runner import run_experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megarank-exp", description="Reproduce a figure or table of the paper.")
    parser.add_argument("name", choices=(*NAMES, "reproduce"), help="experiment, or 'reproduce' for all")
    parser.add_argument("overrides", nargs="*", help="OmegaConf dot-list overrides, e.g. steps=200")
    parser.add_argument("--config", default=None, help="experiment YAML (default configs/experiments/paper/NAME.yaml)")
    parser.add_argument("--force", action="store_true", help="rerun even when a finished result exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[megarank] %(message)s")
    try:
        if args.name == "reproduce":
            if args.overrides or args.config:
                raise MegarankError("reproduce runs every experiment's default config: drop the overrides and "
                                    "--config, or run one experiment with them (megarank-exp NAME ...)")
            return 1 if reproduce(force=args.force, progress=not args.no_progress).failed else 0
        run_experiment(args.name, args.config, args.overrides, force=args.force, progress=not args.no_progress)
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
