"""The grid section of a sweep file: which training config every cell starts from and which keys vary.

A grid file is any YAML with a `grid:` section; its other top-level keys are ignored (so a paper experiment's
config that embeds a `grid:` is a grid file too) and its `defaults:` list is honoured as for training configs.

    grid:
      base: configs/experiments/pile_gpt_16xa100.yaml
      overrides: [data.path=data/pile]
      axes:
        optim.wd_attn: [0, 0.1, 1.0]
        optim.wd_mlp: [0, 0.1, 1.0]
        seed: [1, 2, 3, 4, 5]
      run_root: runs/sweeps/{name}

Command-line overrides (`key=value`) starting with `grid.` set the grid itself: `grid.run_root=/scratch/t1`,
`grid.axes.seed=[1,2]`, `grid.axes.optim.lr=[1e-3]` (everything after `grid.axes.` is the axis' training key;
a new axis goes last), `grid.axes={seed: [1, 2]}` (the axes replaced wholesale). Any other key is a training
override appended to grid.overrides, i.e. applied to every cell: `data.path=data/pile`.

The axis overrides have one parser, `parse_axis_overrides`, and reach a grid only through
`apply_axis_overrides`, which builds a new GridConfig and so runs its checks (an empty axis, a run-dir axis);
megarank-sweep and megarank-exp (a paper experiment's `grid:`) both go through them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from megarank.config.load import merge_checked, read_with_defaults, to_object
from megarank.errors import MegarankError

NAME_PLACEHOLDER = "{name}"
AXIS_PREFIX = "grid.axes."


@dataclass
class GridConfig:
    """A grid of training runs: the cartesian product of `axes`, each cell one run of `base`."""

    base: str = "configs/default.yaml"
    """Training config every cell starts from (a path relative to the working directory, i.e. the repo root)."""
    overrides: list[str] = field(default_factory=list)
    """Dot-list overrides applied to every cell, before the axis values (e.g. data.path=data/pile)."""
    axes: dict[str, list[Any]] = field(default_factory=dict)
    """Training-config key -> the values it takes (`seed` included). The cells are the cartesian product, in
    the order written: the first axis varies slowest. No axes: one cell, the base config itself."""
    run_root: str = "runs/sweeps/{name}"
    """Each cell trains in <run_root>/<cell name>. '{name}' is the grid file's name without .yaml."""
    nproc: int = 1
    """Processes per cell for local runs (`megarank-sweep run`); more than 1 goes through the DeepSpeed
    launcher, as `make pretrain NPROC=n` does. Cluster launches take their size from `launch` options."""

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise MegarankError(f"grid.nproc must be >= 1, got {self.nproc}")
        for key, values in self.axes.items():
            if not values:
                raise MegarankError(f"grid.axes.{key} is empty; give it at least one value")
        for key in self.axes:
            if key in ("train.run_dir", "checkpoint.dir"):
                raise MegarankError(f"grid.axes.{key}: the sweep sets each cell's run dir itself "
                                    "(<grid.run_root>/<cell name>); vary grid.run_root instead")


@dataclass
class GridFile:
    """The part of a grid file megarank-sweep reads (the rest is ignored)."""

    grid: GridConfig = field(default_factory=GridConfig)
    """The sweep."""


def load_grid(path: str | Path, overrides: Sequence[str] = ()) -> GridConfig:
    """The grid section of `path` (defaults composed, other top-level keys ignored) with CLI `overrides`
    applied (see the module docstring), '{name}' in run_root filled with the file's stem."""
    path = Path(path)
    merged = OmegaConf.structured(GridFile)
    axes: dict[str, list[Any]] = {}  # kept out of OmegaConf: its dot-list would split 'optim.wd_attn'
    found = False
    for part in read_with_defaults(path, chain=()):
        if "grid" not in part:
            continue
        found = True
        section = OmegaConf.to_container(part.grid, resolve=True)
        if not isinstance(section, dict):
            raise MegarankError(f"'{path}': grid: must be a mapping with base, overrides, axes, run_root")
        for key, values in (section.pop("axes", None) or {}).items():
            axes[str(key)] = _axis_values(key, values)
        merged = merge_checked(merged, OmegaConf.create({"grid": section}), GridFile)
    if not found:
        raise MegarankError(f"'{path}' has no grid: section; a grid file names base, overrides, axes, run_root "
                            "under grid: (see configs/sweeps/)")
    parsed = parse_axis_overrides(overrides)
    grid_items, training_items = [], []
    for item in parsed.rest:
        if "=" not in item:
            raise MegarankError(f"override '{item}' is not key=value; write e.g. grid.run_root=runs/t1 or "
                                "data.path=data/pile")
        (grid_items if item.startswith("grid.") else training_items).append(item)
    if grid_items:
        merged = merge_checked(merged, OmegaConf.from_dotlist(grid_items), GridFile)
    grid = to_object(merged).grid
    grid = replace(grid, axes=axes, overrides=[*grid.overrides, *training_items],
                   run_root=grid.run_root.replace(NAME_PLACEHOLDER, path.stem))
    return apply_axis_overrides(grid, parsed)


@dataclass(frozen=True)
class AxisOverrides:
    """The `grid.axes...` items of a command line, parsed, and the items that are not."""

    axes: dict[str, list[Any]]
    """Axis key -> its values, set by `grid.axes.<key>=...` or `grid.axes={...}` (a new axis goes last)."""
    replace: bool
    """`grid.axes={...}` was given: the config's axes are replaced, not added to (a merge could only add)."""
    rest: list[str]
    """Every other item, in the order given (grid.run_root=..., training overrides, experiment knobs)."""


def parse_axis_overrides(overrides: Sequence[str]) -> AxisOverrides:
    """Split the axis overrides from the others. `grid.axes.optim.wd_attn=[0,3]` names the training key
    'optim.wd_attn', which OmegaConf's dot-list would split into nested keys, hence a parser of their own; a
    single value is an axis of one."""
    axes: dict[str, list[Any]] = {}
    replace_axes, rest = False, []
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not (key == "grid.axes" or (key.startswith(AXIS_PREFIX) and len(key) > len(AXIS_PREFIX))):
            rest.append(item)
            continue
        parsed = OmegaConf.from_dotlist([f"v={value}"]).v
        if key == "grid.axes":
            if not isinstance(parsed, DictConfig):
                raise MegarankError(f"grid.axes={value}: give a mapping, e.g. grid.axes={{optim.wd_attn: [0, 1]}}")
            replace_axes = True
            axes.update({str(k): _axis_values(k, v) for k, v in parsed.items()})
        else:
            axis = key[len(AXIS_PREFIX):]
            axes[axis] = _axis_values(axis, parsed)
    return AxisOverrides(axes=axes, replace=replace_axes, rest=rest)


def apply_axis_overrides(grid: GridConfig, parsed: AxisOverrides) -> GridConfig:
    """A new grid with the parsed axes set; built with dataclasses.replace, so GridConfig's own checks run on
    the result (the config's grid is never edited in place)."""
    if not parsed.axes and not parsed.replace:
        return grid
    axes = {} if parsed.replace else dict(grid.axes)
    axes.update(parsed.axes)
    return replace(grid, axes=axes)


def _axis_values(key: str, values: Any) -> list[Any]:
    """An axis' values as a plain list; a single value is an axis of one."""
    if isinstance(values, (ListConfig, DictConfig)):
        values = OmegaConf.to_container(values, resolve=True)
    if isinstance(values, dict):
        raise MegarankError(f"grid.axes.{key} must be a list of values, not a mapping; write the full training key "
                            "with dots, e.g. optim.wd_attn: [0, 0.1]")
    return list(values) if isinstance(values, (list, tuple)) else [values]
