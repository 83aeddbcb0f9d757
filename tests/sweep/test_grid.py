"""Grid files and cells against what the grid names: cell names and override values, CLI overrides of the grid
(an axis set or added, the axes replaced, an empty or run-dir axis refused by GridConfig's checks), and a bad axis
key failing with one line before anything runs (no run dir made). No training."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from megarank.errors import MegarankError
from megarank.sweep import expand, load_grid
from megarank.sweep.cells import format_value
from megarank.sweep.cli import main
from tests.helpers import REPO
from tests.sweep.conftest import write_grid


@pytest.mark.parametrize("value", [0, 0.1, 1.0, 1e-05, True, None, "sdpa", "1e-3", "a b", "null", [1, 2]])
def test_format_value_round_trips_through_the_dot_list(value):
    assert OmegaConf.to_container(OmegaConf.from_dotlist([f"k={format_value(value)}"]))["k"] == value


def test_cells_names_overrides_and_cli_overrides(tmp_path):
    grid_file = write_grid(tmp_path / "grid.yaml", tmp_path / "data", tmp_path / "runs",
                           axes={"optim.wd_attn": [0, 0.1], "optim.wd_mlp": [1.0], "seed": [1]})
    cells = expand(load_grid(grid_file, ["grid.axes.seed=[3]", "grid.axes.model.dropout=0.1", "train.log_every=2"]))
    assert [c.name for c in cells] == ["wd_attn0-wd_mlp1.0-seed3-dropout0.1", "wd_attn0.1-wd_mlp1.0-seed3-dropout0.1"]
    cell = cells[1]
    assert cell.overrides[-7:] == ("train.log_every=2", "optim.wd_attn=0.1", "optim.wd_mlp=1.0", "seed=3",
                                   "model.dropout=0.1", f"train.run_dir={tmp_path / 'runs' / cell.name}",
                                   "train.resume=auto")
    assert (cell.config.optim.wd_attn, cell.config.seed, cell.config.train.log_every) == (0.1, 3, 2)
    assert cell.run_dir == tmp_path / "runs" / cell.name and cell.state == "missing"


def test_shared_last_components_get_longer_labels(tmp_path):
    grid_file = write_grid(tmp_path / "grid.yaml", tmp_path / "data", tmp_path / "runs",
                           axes={"optim.wd_attn": [0], "seed": [1]})
    grid = load_grid(grid_file, ["grid.axes.model.n_layers=[1]", "grid.axes.train.max_steps=[3]"])
    assert expand(grid)[0].name == "wd_attn0-seed1-n_layers1-max_steps3"


def test_run_root_defaults_to_the_grid_file_name():
    assert load_grid(REPO / "configs/sweeps/table1_16xa100.yaml").run_root == "runs/sweeps/table1_16xa100"


def test_bad_axis_key_fails_with_one_line_before_anything_runs(tmp_path, capsys):
    grid_file = write_grid(tmp_path / "grid.yaml", tmp_path / "data", tmp_path / "runs",
                           axes={"optim.wd_atn": [0, 0.1], "seed": [1]})
    assert main(["run", str(grid_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "'optim.wd_attn'" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("grid_file", ["table1_16xa100.yaml", "vit_wd_attn_16xa100.yaml"])
def test_shipped_grids_resolve(grid_file):
    cells = expand(load_grid(REPO / "configs/sweeps" / grid_file))
    assert len(cells) == {"table1_16xa100.yaml": 45, "vit_wd_attn_16xa100.yaml": 6}[grid_file]
    assert len({c.name for c in cells}) == len(cells)


def test_bad_values_fail_with_one_line(tmp_path):
    grid_file = write_grid(tmp_path / "grid.yaml", tmp_path / "data", tmp_path / "runs", axes={"seed": [1]})
    with pytest.raises(MegarankError, match="optim.wd_attn must be >= 0"):
        expand(load_grid(grid_file, ["grid.axes.optim.wd_attn=[0,-1]"]))
    with pytest.raises(MegarankError, match="unknown config key 'grid.axs'"):
        load_grid(grid_file, ["grid.axs=1"])
    with pytest.raises(MegarankError, match="has no grid: section"):
        load_grid(REPO / "configs/default.yaml")


def test_axes_replaced_wholesale_from_the_command_line(tmp_path):
    """grid.axes={...} against the file's axes: replaced, not merged (it used to be dropped silently)."""
    grid_file = write_grid(tmp_path / "grid.yaml", tmp_path / "data", tmp_path / "runs",
                           axes={"optim.wd_attn": [0, 0.1], "seed": [1, 2]})
    assert load_grid(grid_file, ["grid.axes={seed: [7]}"]).axes == {"seed": [7]}
    assert load_grid(grid_file, ["grid.axes={seed: 7}", "grid.axes.optim.lr=[1e-3]"]).axes == {
        "seed": [7], "optim.lr": [1e-3]}


@pytest.mark.parametrize("override, message", [
    ("grid.axes.seed=[]", "grid.axes.seed is empty; give it at least one value"),
    ("grid.axes.train.run_dir=[a,b]", "grid.axes.train.run_dir: the sweep sets each cell's run dir itself"),
    ("grid.axes={checkpoint.dir: [a]}", "grid.axes.checkpoint.dir: the sweep sets each cell's run dir itself"),
    ("grid.axes=[1,2]", "grid.axes=[1,2]: give a mapping"),
])
def test_bad_axis_overrides_fail_with_one_line(tmp_path, capsys, override, message):
    """An empty axis and a run-dir axis from megarank-sweep's command line against GridConfig's checks."""
    grid_file = write_grid(tmp_path / "grid.yaml", tmp_path / "data", tmp_path / "runs", axes={"seed": [1]})
    assert main(["list", str(grid_file), override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
