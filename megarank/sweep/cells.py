"""The cells of a grid: name, training overrides, run dir and resolved config of each, and where each stands.

A cell's name joins its axis values, each after the last component of its key: `wd_attn0.1-wd_mlp0-seed1`
(a longer suffix of the key where two axes share a last component, e.g. `model.dropout` and
`data.dropout`). Characters outside [A-Za-z0-9._+=-] become '_'. Its overrides are the grid's overrides,
then the axis values, then `train.run_dir=<run_root>/<name>` and `train.resume=auto` (so a cell cut short,
locally or by a SLURM preemption/requeue, continues from its newest complete checkpoint).

State, from the checkpoints (megarank/ckpt/tags.py): `finished` (a complete checkpoint at step >=
train.max_steps), `partial` (complete checkpoints, none that far: resumed when run again) or `missing`.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megarank.ckpt.tags import complete_checkpoints
from megarank.config.load import load_config
from megarank.config.schema import ExperimentConfig
from megarank.errors import MegarankError
from megarank.sweep.grid import NAME_PLACEHOLDER, GridConfig

FINISHED, PARTIAL, MISSING = "finished", "partial", "missing"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")
_PLAIN = re.compile(r"^[A-Za-z0-9._/+-]+$")


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    name: str
    """Unique, filesystem-safe: `wd_attn0.1-seed1`."""
    values: dict[str, Any]
    """Axis key -> this cell's value, in axis order."""
    base: str
    """The training config file (grid.base)."""
    overrides: tuple[str, ...]
    """Dot-list overrides on base that make this cell (grid overrides, axis values, run dir, resume=auto)."""
    config: ExperimentConfig
    """The resolved training config (checked by load_config, like megarank-train does)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.config.train.run_dir)

    @property
    def checkpoint_step(self) -> int | None:
        """Step of the newest complete checkpoint, None if there is none."""
        found = complete_checkpoints(Path(self.config.checkpoint.dir))
        return found[-1][0] if found else None

    @property
    def state(self) -> str:
        step = self.checkpoint_step
        if step is None:
            return MISSING
        return FINISHED if step >= self.config.train.max_steps else PARTIAL


def format_value(value: Any) -> str:
    """`value` as an OmegaConf dot-list value that parses back to the same thing (0.1, true, null, [1,2])."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    plain = _PLAIN.match(text) and text.lower() not in ("true", "false", "null", "none", "yes", "no", "on", "off")
    if plain:
        try:
            float(text)  # '1e-3' as a string must stay a string
        except ValueError:
            return text
    return json.dumps(text)


def _labels(keys: list[str]) -> dict[str, str]:
    """Each axis key's label in cell names: its shortest dotted suffix that no other axis ends with."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            if not any(other != key and (other == label or other.endswith("." + label)) for other in keys):
                break
        labels[key] = label
    return labels


def cell_name(values: dict[str, Any], labels: dict[str, str]) -> str:
    if not values:
        return "base"
    return "-".join(_UNSAFE.sub("_", f"{labels[key]}{format_value(value)}".replace("/", "_"))
                    for key, value in values.items())


def expand(grid: GridConfig) -> list[Cell]:
    """Every cell of the grid in order, each training config resolved and checked before anything runs.
    Raises MegarankError (one line) on an unknown key or a bad value in any cell."""
    if NAME_PLACEHOLDER in grid.run_root:
        raise MegarankError(f"grid.run_root '{grid.run_root}' still holds {NAME_PLACEHOLDER}; set grid.run_root "
                            "(load_grid fills it from the grid file's name)")
    if not Path(grid.base).is_file():
        raise MegarankError(f"grid.base '{grid.base}' not found; paths are relative to the working directory "
                            "(run megarank-sweep from the repo root)")
    keys = list(grid.axes)
    labels = _labels(keys)
    cells, seen = [], {}
    for combo in itertools.product(*(grid.axes[key] for key in keys)):
        values = dict(zip(keys, combo))
        name = cell_name(values, labels)
        if name in seen:
            raise MegarankError(f"grid.axes: cells {seen[name]} and {values} both get the name '{name}'; "
                                "use values that differ after replacing characters outside [A-Za-z0-9._+=-]")
        seen[name] = values
        overrides = (*grid.overrides, *(f"{key}={format_value(value)}" for key, value in values.items()),
                     f"train.run_dir={Path(grid.run_root) / name}", "train.resume=auto")
        try:
            config = load_config(grid.base, overrides)
        except MegarankError as err:
            raise MegarankError(f"cell {name}: {err}") from None
        cells.append(Cell(name=name, values=values, base=grid.base, overrides=overrides, config=config))
    return cells
