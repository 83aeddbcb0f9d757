"""`megarank-sweep`: one runner for every grid of training runs (the paper's Table 1, the λ_attn sweeps).

    grid.py    GridConfig (the `grid:` section of a grid file), load_grid, and the one parser of grid-axis
               overrides (parse_axis_overrides / apply_axis_overrides, which megarank-exp uses too)
    cells.py   the cells: name, overrides, run dir, resolved config, state (finished / partial / missing)
    run.py     run_grid: the unfinished cells here, one after another
    slurm.py   write_launch: commands.txt (one launch line per cell) and a SLURM array script
    gather.py  gather_grid / write_gather: a table, JSON and plot of whatever cells have run
    cli.py     the console entry point
"""

from megarank.sweep.cells import Cell, expand
from megarank.sweep.gather import Gathered, gather_grid, write_gather
from megarank.sweep.grid import AxisOverrides, GridConfig, apply_axis_overrides, load_grid, parse_axis_overrides
from megarank.sweep.run import run_grid
from megarank.sweep.slurm import SlurmOptions, write_launch

__all__ = ["GridConfig", "load_grid", "AxisOverrides", "parse_axis_overrides", "apply_axis_overrides", "Cell",
           "expand", "run_grid", "SlurmOptions", "write_launch", "Gathered", "gather_grid", "write_gather"]
