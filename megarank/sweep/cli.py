"""`megarank-sweep`: run, launch, gather or list the cells of a grid file.

    megarank-sweep run GRIDFILE [key=value ...] [--no-progress]     unfinished cells here, in order
    megarank-sweep launch GRIDFILE --out DIR [--all] [--array-parallel K] [--nodes 2] [--gpus-per-node 8]
                   [--time 48:00:00] [--partition P] [--account A] [--job-name N] [key=value ...]
    megarank-sweep gather GRIDFILE --out DIR [--no-plot] [key=value ...]
    megarank-sweep list GRIDFILE [key=value ...]

Overrides starting with `grid.` set the grid (grid.run_root=..., grid.axes.seed=[1,2]); any other key=value
is a training override for every cell (data.path=data/pile). Every cell's config is resolved before anything
runs; a user error prints one line, `error: ...`, and exits 2. `run` exits 1 if a cell failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from megarank.errors import MegarankError, stdout_closed

log = logging.getLogger("megarank")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megarank-sweep", description="Run a grid of training runs.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("grid", type=Path, help="YAML with a grid: section, e.g. configs/sweeps/table1_16xa100.yaml")
        p.add_argument("overrides", nargs="*", help="grid.KEY=VALUE for the grid, KEY=VALUE for every cell's training")
        return p

    run = command("run", "train the unfinished cells on this machine, one after another")
    run.add_argument("--no-progress", action="store_true", help="no progress bar over cells")

    launch = command("launch", "write commands.txt (a launch line per cell) and sweep.sbatch (a SLURM array)")
    launch.add_argument("--out", required=True, type=Path, help="directory for commands.txt, sweep.sbatch, logs/")
    launch.add_argument("--all", action="store_true", help="write finished cells too")
    launch.add_argument("--array-parallel", type=int, default=1, metavar="K", help="cells running at once (%%K)")
    launch.add_argument("--nodes", type=int, default=2, help="nodes per cell (default 2)")
    launch.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    launch.add_argument("--time", default="48:00:00", help="time limit per cell (default 48:00:00)")
    launch.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    launch.add_argument("--account", default=None, help="SLURM account (default: yours)")
    launch.add_argument("--job-name", default=None, help="SLURM job name (default: megarank-<grid file name>)")
    launch.add_argument("--master-port", type=int, default=29500, help="base rendezvous port (+ array index)")

    gather = command("gather", "tabulate and plot the cells that have run; list the missing ones")
    gather.add_argument("--out", required=True, type=Path, help="directory for gather.csv, gather.json, gather.png")
    gather.add_argument("--no-plot", action="store_true", help="skip gather.png")

    command("list", "show every cell, its state and its run dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # overrides may follow options (`launch G --out D key=value`): argparse leaves those unparsed
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides += extra
    logging.basicConfig(level=logging.INFO, format="[megarank] %(message)s")
    from megarank.sweep.grid import load_grid

    try:
        grid = load_grid(args.grid, args.overrides)
        return _COMMANDS[args.command](grid, args)
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return stdout_closed()


def _run(grid, args) -> int:
    from megarank.sweep.run import FAILED, SKIPPED, run_grid

    results = run_grid(grid, progress=not args.no_progress)
    failed = [cell for cell, status in results if status == FAILED]
    skipped = sum(status == SKIPPED for _, status in results)
    log.info("%d cells: %d trained, %d already finished, %d failed", len(results),
             len(results) - skipped - len(failed), skipped, len(failed))
    for cell in failed:
        log.error("failed: %s (%s)", cell.name, cell.run_dir / "train.log")
    return 1 if failed else 0


def _launch(grid, args) -> int:
    from megarank.sweep.slurm import SlurmOptions, write_launch

    if args.array_parallel < 1:
        raise MegarankError(f"--array-parallel must be >= 1, got {args.array_parallel}")
    options = SlurmOptions(nodes=args.nodes, gpus_per_node=args.gpus_per_node, time=args.time,
                           partition=args.partition, account=args.account, array_parallel=args.array_parallel,
                           job_name=args.job_name or f"megarank-{args.grid.stem}", master_port=args.master_port)
    cells = write_launch(grid, args.out, options, all_cells=args.all)
    if not cells:
        log.info("nothing to launch: every cell is finished (--all writes them anyway)")
        return 0
    log.info("%d cells -> %s and %s; submit with: sbatch %s", len(cells), args.out / "commands.txt",
             args.out / "sweep.sbatch", args.out / "sweep.sbatch")
    return 0


def _gather(grid, args) -> int:
    from megarank.sweep.gather import gather_grid, write_gather

    gathered = gather_grid(grid)
    written = write_gather(gathered, grid, args.out, plot=not args.no_plot)
    partial = [r["cell"] for r in gathered.records if r["state"] == "partial"]
    log.info("%d cells gathered (%d partial) -> %s", len(gathered.records), len(partial),
             ", ".join(str(p) for p in written))
    if partial:
        log.info("partial: %s", " ".join(partial))
    if gathered.missing:
        log.info("missing %d: %s", len(gathered.missing), " ".join(cell.name for cell in gathered.missing))
    return 0


def _list(grid, args) -> int:
    from megarank.sweep.cells import expand

    cells = expand(grid)
    width = max(len(cell.name) for cell in cells)
    for cell in cells:
        step = cell.checkpoint_step
        progress = f"{step if step is not None else 0}/{cell.config.train.max_steps}"
        print(f"{cell.name:<{width}}  {cell.state:<8}  {progress:>13}  {cell.run_dir}")
    return 0


_COMMANDS = {"run": _run, "launch": _launch, "gather": _gather, "list": _list}


if __name__ == "__main__":
    sys.exit(main())
