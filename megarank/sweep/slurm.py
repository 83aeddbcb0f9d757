"""A grid for a cluster: one launch line per cell (commands.txt) and a SLURM array script that runs them.

    <out>/commands.txt   line i = cell i:  NNODES=2 GPUS_PER_NODE=8 tools/launch_node.sh BASE OVERRIDES...
    <out>/sweep.sbatch   #SBATCH --array=0-(N-1)%K; task t runs line t+1 under srun, one task per node, with
                         NODE_RANK=$SLURM_NODEID and MASTER_ADDR = the job's first node (scontrol)
    <out>/logs/          one SLURM output file per array task

A line runs by hand as well, on every node of a 2-node allocation:
    MASTER_ADDR=node1 NODE_RANK=<0|1> bash -c "$(sed -n 3p <out>/commands.txt)"
Only unfinished cells are written unless all_cells; every line carries train.resume=auto, so a preempted or
requeued task (or the same script submitted again) continues its cell from the newest complete checkpoint.

Why a generated script and not submitit (facebookincubator/submitit): submitit submits pickled Python
functions from a live Python process and hands back futures; each of its multi-node tasks runs the function
once per task, so the DeepSpeed per-node launcher (tools/launch_node.sh) would have to be re-created inside
a pickled callable. What a sweep needs is the opposite: plain text a user can read, edit, diff, resubmit
(`sbatch sweep.sbatch`), run one line of by hand, or port to a non-SLURM scheduler, with no pickles on the
shared filesystem and no extra dependency on the login node. The array script is ~20 lines.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from megarank.sweep.cells import FINISHED, Cell, expand
from megarank.sweep.grid import GridConfig


@dataclass
class SlurmOptions:
    """The allocation of one cell (an array task) and of the array."""

    nodes: int = 2
    """Nodes per cell."""
    gpus_per_node: int = 8
    """GPUs (= training processes) per node."""
    time: str = "48:00:00"
    """Wall-clock limit per cell (sbatch --time)."""
    partition: str | None = None
    """sbatch --partition; None leaves it to the cluster's default."""
    account: str | None = None
    """sbatch --account; None leaves it to the user's default."""
    array_parallel: int = 1
    """Cells running at the same time (the %K of --array); 1 fits a 16-GPU cluster with 2×8-GPU cells."""
    job_name: str = "megarank-sweep"
    """sbatch --job-name."""
    master_port: int = 29500
    """Rendezvous port; array task t uses master_port + t so concurrent tasks sharing a node do not clash."""


def launch_line(cell: Cell, options: SlurmOptions) -> str:
    """The shell line that starts `cell` on this node of a multi-node job (NODE_RANK, MASTER_ADDR from the
    environment): tools/launch_node.sh with the cell's config and overrides."""
    return shlex.join([f"NNODES={options.nodes}", f"GPUS_PER_NODE={options.gpus_per_node}",
                       "tools/launch_node.sh", cell.base, *cell.overrides])


def sbatch_script(n_cells: int, commands: Path, logs: Path, options: SlurmOptions, workdir: Path) -> str:
    optional = [f"#SBATCH --{flag}={value}" for flag, value in
                (("partition", options.partition), ("account", options.account)) if value]
    header = [
        "#!/bin/bash",
        f"# megarank-sweep: {n_cells} cells, one per array task; task t runs line t+1 of {commands}.",
        "# Submit with `sbatch <this file>`; resubmitting continues unfinished cells (train.resume=auto).",
        f"#SBATCH --job-name={options.job_name}",
        f"#SBATCH --nodes={options.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={options.gpus_per_node}",
        f"#SBATCH --time={options.time}",
        *optional,
        f"#SBATCH --array=0-{n_cells - 1}%{options.array_parallel}",
        f"#SBATCH --output={logs}/%x_%A_%a.out",
    ]
    body = f"""
set -euo pipefail
cd "${{MEGARANK_ROOT:-{shlex.quote(str(workdir))}}}"  # the repo root: lines use relative paths
LINE=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(commands))})
if [ -z "$LINE" ]; then echo "no line $((SLURM_ARRAY_TASK_ID + 1)) in {commands}" >&2; exit 1; fi
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
export MASTER_ADDR MASTER_PORT=$(({options.master_port} + SLURM_ARRAY_TASK_ID % 1000))
echo "task $SLURM_ARRAY_TASK_ID on $SLURM_JOB_NODELIST (master $MASTER_ADDR:$MASTER_PORT): $LINE"
srun --ntasks-per-node=1 bash -c "export NODE_RANK=\\$SLURM_NODEID; $LINE"
"""
    return "\n".join(header) + "\n" + body


def write_launch(grid: GridConfig, out: Path, options: SlurmOptions = SlurmOptions(), *,
                 all_cells: bool = False) -> list[Cell]:
    """Write <out>/commands.txt and <out>/sweep.sbatch for the unfinished cells (every cell if all_cells);
    returns the cells written, in line order. Writes nothing when there is no cell to launch."""
    cells = [cell for cell in expand(grid) if all_cells or cell.state != FINISHED]
    if not cells:
        return []
    out = out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    commands = out / "commands.txt"
    commands.write_text("".join(launch_line(cell, options) + "\n" for cell in cells))
    script = out / "sweep.sbatch"
    script.write_text(sbatch_script(len(cells), commands, logs, options, Path.cwd()))
    script.chmod(0o755)
    return cells
