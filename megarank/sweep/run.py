"""Run a grid on this machine: the unfinished cells one after another, finished ones skipped.

Each cell runs through the launcher a user runs by hand: `python -m megarank.train BASE OVERRIDES` for one
process, the DeepSpeed launcher (`deepspeed --num_gpus N --module megarank.train ...`, as `make pretrain`)
for grid.nproc > 1. Its output is appended to <run_dir>/train.log (progress bars off). A partial cell resumes
from its newest complete checkpoint (every cell carries train.resume=auto). A failing cell is reported with
its log and the sweep goes on; the caller decides what a failure means (the CLI exits 1).
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from megarank.sweep.cells import FINISHED, Cell, expand
from megarank.sweep.grid import GridConfig

SKIPPED, FAILED = "skipped", "failed"
# A child must not join a process group its parent happens to be part of.
_DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_command(cell: Cell, nproc: int) -> list[str]:
    """The command that trains `cell` here: one process, or nproc through the DeepSpeed launcher."""
    args = [cell.base, *cell.overrides, "train.progress=false"]
    if nproc == 1:
        return [sys.executable, "-m", "megarank.train", *args]
    deepspeed = Path(sys.executable).parent / "deepspeed"
    launcher = [str(deepspeed)] if deepspeed.is_file() else [sys.executable, "-m", "deepspeed.launcher.runner"]
    return [*launcher, "--num_gpus", str(nproc), "--master_port", str(_free_port()), "--module", "megarank.train",
            *args]


def run_cell(cell: Cell, nproc: int = 1) -> int:
    """Train one cell to the end (or resume it); output appended to <run_dir>/train.log; the exit status."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    command = local_command(cell, nproc)
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env.update(PYTHONUNBUFFERED="1")
    with open(cell.run_dir / "train.log", "a") as out:
        out.write(f"\n==> megarank-sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n")
        out.flush()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            return proc.wait()
        except BaseException:  # Ctrl-C: stop this cell's training too, then stop the sweep
            proc.terminate()
            proc.wait()
            raise


def run_grid(grid: GridConfig, *, progress: bool = True) -> list[tuple[Cell, str]]:
    """Train every unfinished cell in order. Returns (cell, status) for every cell, status 'skipped' (was
    finished), 'finished' (trained to the end now) or 'failed' (non-zero exit, or stopped short)."""
    cells = expand(grid)  # every cell's config checked before the first one starts
    results = []
    bar = tqdm(cells, desc="sweep", unit="cell", disable=not progress)
    for cell in bar:
        bar.set_postfix_str(cell.name)
        if cell.state == FINISHED:
            results.append((cell, SKIPPED))
            continue
        code = run_cell(cell, grid.nproc)
        if code == 0 and cell.state == FINISHED:
            results.append((cell, FINISHED))
            continue
        why = f"exit {code}" if code else f"stopped at step {cell.checkpoint_step}"
        message = f"cell {cell.name} failed ({why}); see {cell.run_dir / 'train.log'}"
        tqdm.write(f"[megarank] {message}", file=sys.stderr)  # above the bar, not through it
        results.append((cell, FAILED))
    bar.close()
    return results
