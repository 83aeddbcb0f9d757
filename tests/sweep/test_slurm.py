"""write_launch / `megarank-sweep launch` against the grid: one launch line per unfinished cell (every cell with
--all), an array script whose size matches the line count and that bash parses."""

from __future__ import annotations

import re
import shlex
import subprocess

from megarank.sweep.cli import main


def test_launch_writes_a_line_per_unfinished_cell_and_a_matching_array(swept, tmp_path):
    out = tmp_path / "slurm"
    # seed 3 added: two unfinished cells among six
    assert main(["launch", str(swept.grid_file), "--out", str(out), "--array-parallel", "2", "--partition", "gpu",
                 "grid.axes.seed=[1,2,3]"]) == 0
    lines = (out / "commands.txt").read_text().splitlines()
    assert len(lines) == 2
    words = shlex.split(lines[1])
    assert words[:3] == ["NNODES=2", "GPUS_PER_NODE=8", "tools/launch_node.sh"]
    assert words[3] == swept.cells[0].base
    assert "optim.wd_attn=0.1" in words and "seed=3" in words and words[-1] == "train.resume=auto"
    assert f"train.run_dir={swept.cells[0].run_dir.parent / 'wd_attn0.1-seed3'}" in words

    script = (out / "sweep.sbatch").read_text()
    assert re.search(r"^#SBATCH --array=0-1%2$", script, re.M)
    assert re.search(r"^#SBATCH --nodes=2$", script, re.M) and re.search(r"^#SBATCH --partition=gpu$", script, re.M)
    assert str(out / "commands.txt") in script and "tools/launch_node.sh" not in script  # the line carries it
    subprocess.run(["bash", "-n", str(out / "sweep.sbatch")], check=True)

    assert main(["launch", str(swept.grid_file), "--out", str(out), "--all"]) == 0
    assert len((out / "commands.txt").read_text().splitlines()) == 4
    assert re.search(r"^#SBATCH --array=0-3%1$", (out / "sweep.sbatch").read_text(), re.M)
