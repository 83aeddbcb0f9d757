"""lm-sweep and vit-sweep at a tiny size, through `megarank-exp` (real training runs of the sweep's cells):
the Table 1 analogue and summary cells against the per-run numbers they average (each run's metrics.jsonl and
megarank-rank of its final checkpoint), missing cells listed when gathering an unfinished sweep, the report
writers' files, `make reproduce`'s REPORT.md built from finished results, and grid-axis overrides on the command line
refused by the grid's own checks (the same as megarank-sweep's) before anything runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from megarank.experiments.cli import main as exp_main
from tests.helpers import TINY, VIT_TINY, read_metrics

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def lm_sweep(tiny_corpus, tmp_path_factory) -> Path:
    """A 2 (wd_attn) × 1 (wd_mlp) × 2 (seeds) sweep of the tiny GPT, 3 steps a cell; returns out_dir."""
    root = tmp_path_factory.mktemp("lm_sweep")
    config = _write(root / "lm.yaml", {
        "grid": {"base": "configs/default.yaml",
                 "overrides": [*TINY, f"data.path={tiny_corpus}", "train.max_steps=3", "train.eval_every=3",
                               "train.eval_batches=2", "analysis.every=0", "checkpoint.every=0"],
                 "axes": {"optim.wd_attn": [0.0, 2.0], "optim.wd_mlp": [0.1], "seed": [1, 2]},
                 "run_root": str(root / "cells"), "nproc": 1},
        "out_dir": str(root / "out"), "eval_split": "val", "eval_batch_size": 4, "rank_drop_min": 0.0})
    assert exp_main(["lm-sweep", "--config", str(config), "--no-progress"]) == 0
    return root


def test_lm_sweep_cells_average_their_runs(lm_sweep):
    """Each cell's val_ppl mean/std and rank means equal those computed from its two runs' own files."""
    from megarank.analysis.readers import open_source
    from megarank.analysis.report import analyse

    summary = json.loads((lm_sweep / "out" / "summary.json").read_text())
    assert summary["experiment"] == "lm-sweep" and summary["verdict"] in ("reproduced", "partly", "not")
    assert summary["missing"] == [] and summary["n_runs"] == 4
    assert [c["wd_attn"] for c in summary["cells"]] == [0.0, 2.0]
    for cell in summary["cells"]:
        runs = sorted((lm_sweep / "cells").glob(f"wd_attn{cell['wd_attn']:g}*"))
        assert len(runs) == 2 and cell["seeds"] == [1, 2]
        val = [[r for r in read_metrics(run) if "val_ppl" in r][-1]["val_ppl"] for run in runs]
        assert cell["val_ppl_mean"] == pytest.approx(np.mean(val), rel=1e-9)
        assert cell["val_ppl_std"] == pytest.approx(np.std(val, ddof=1), rel=1e-9)
        ranks = []
        for run in runs:
            with open_source(run) as source:
                ranks.append(analyse(source, rtol=0.01, atol=1e-3, progress=False).means()["qk"]["rank"])
        assert cell["qk_rank_mean"] == pytest.approx(np.mean(ranks))
        assert cell["test_ppl_mean"] is None  # eval_split=val: no test column (NaN is null in strict JSON)
        lr_sum = [sum(r["lr"] for r in read_metrics(run) if "loss" in r) for run in runs]
        assert cell["total_decay_attn"] == pytest.approx(cell["wd_attn"] * np.mean(lr_sum))
    out = lm_sweep / "out"
    report = (out / "report.md").read_text()
    assert "Table 1 analogue" in report and "| 2 (" in report and "Where the rank halves" in report
    for name in ("rank_per_head", "rank_vs_wd_attn", "ppl_vs_wd_attn"):
        assert f"({name}.png)" in report and (out / f"{name}.png").stat().st_size > 1000
    assert {"cells.csv", "runs.csv"} <= {p.name for p in out.iterdir()}


def test_lm_sweep_halving_from_its_cells(lm_sweep):
    """summary.json's halving points against the interpolation over the cells' own total decays and ranks."""
    from megarank.experiments.sweeps import halving_point

    summary = json.loads((lm_sweep / "out" / "summary.json").read_text())
    cells = sorted(summary["cells"], key=lambda c: c["wd_attn"])
    totals = [c["total_decay_attn"] for c in cells]
    assert totals[0] == 0 and totals[1] > 0
    for key in ("qk_rank", "ov_rank", "qk_effective_rank", "ov_effective_rank"):
        assert summary["halving"]["0.1"][key] == halving_point(totals, [c[f"{key}_mean"] for c in cells])


def test_lm_sweep_eval_matches_megarank_eval(lm_sweep):
    """The per-run evaluated perplexity in runs.csv is megarank-eval's number for that checkpoint."""
    import csv

    from megarank.evaluation import evaluate_checkpoint

    rows = list(csv.DictReader((lm_sweep / "out" / "runs.csv").open()))
    first = rows[0]
    direct = evaluate_checkpoint(lm_sweep / "cells" / first["cell"], split="val", batch_size=4, progress=False)
    assert float(first["val_eval_ppl"]) == pytest.approx(direct["ppl"], rel=1e-9)


def test_lm_sweep_gathers_without_the_missing_cell(lm_sweep, tmp_path):
    """run_missing=false over a sweep with one cell gone: the rest is tabulated, the gone one listed."""
    cells = tmp_path / "cells"
    shutil.copytree(lm_sweep / "cells", cells)
    gone = sorted(cells.iterdir())[-1].name
    shutil.rmtree(cells / gone)
    config = yaml.safe_load((lm_sweep / "lm.yaml").read_text())
    config["grid"]["run_root"], config["out_dir"], config["run_missing"] = str(cells), str(tmp_path / "out"), False
    assert exp_main(["lm-sweep", "--config", str(_write(tmp_path / "lm.yaml", config)), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["missing"] == [gone] and summary["n_runs"] == 3
    assert "Missing cells" in (tmp_path / "out" / "report.md").read_text()


def test_vit_sweep_tiny(tmp_path):
    """Two wd_attn cells of the tiny ViT: rows per wd_attn with top-1 from the run and ranks from its checkpoint."""
    config = _write(tmp_path / "vit.yaml", {
        "grid": {"base": "configs/vit_default.yaml",
                 "overrides": [*VIT_TINY, "train.max_steps=2", "train.eval_every=2", "train.eval_batches=2",
                               "analysis.every=0", "checkpoint.every=0"],
                 "axes": {"optim.wd_attn": [0.0, 1.0]}, "run_root": str(tmp_path / "cells"), "nproc": 1},
        "out_dir": str(tmp_path / "out"), "rank_drop_min": 0.0})
    assert exp_main(["vit-sweep", "--config", str(config), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["wd_attn"] for r in summary["rows"]] == [0.0, 1.0]
    for row in summary["rows"]:
        run = next((tmp_path / "cells").glob(f"wd_attn{row['wd_attn']:g}*"))
        assert row["val_acc_mean"] == [r for r in read_metrics(run) if "val_acc" in r][-1]["val_acc"]
        assert 0 < row["qk_rank_mean"] <= summary["d_head"]
    assert (tmp_path / "out" / "rank_vs_wd_attn.png").is_file()


def test_sweep_experiment_bad_axes_exit_2(tmp_path, capsys):
    """lm-sweep needs both decay axes: a grid without wd_mlp is a one-line error before anything runs."""
    code = exp_main(["lm-sweep", "grid.axes={}", f"out_dir={tmp_path}/out", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "optim.wd_attn" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, message", [
    ("grid.axes.seed=[]", "grid.axes.seed is empty"),
    ("grid.axes.train.run_dir=[runs/a,runs/b]", "grid.axes.train.run_dir: the sweep sets each cell's run dir"),
    ("grid.axes={optim.wd_attn: [0, 1], optim.wd_mlp: [0.1], checkpoint.dir: [c]}", "grid.axes.checkpoint.dir"),
])
def test_grid_axis_overrides_go_through_the_grids_checks(override, message, tmp_path, capsys):
    """An empty axis and a run-dir axis given on megarank-exp's command line against GridConfig's own checks:
    exit 2 with that one line, before any cell or output directory exists."""
    code = exp_main(["lm-sweep", override, f"grid.run_root={tmp_path}/cells", f"out_dir={tmp_path}/out",
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cells").exists()


def test_grid_axis_overrides_replace_or_extend_the_axes():
    """The resolved config's grid against the command line: an axis set, an axis added last, the axes replaced."""
    from megarank.experiments.runner import load_experiment

    _, cfg = load_experiment("lm-sweep", overrides=["grid.axes.seed=[1,2]", "grid.axes.model.dropout=0.1"])
    assert cfg.grid.axes["seed"] == [1, 2] and list(cfg.grid.axes)[-1] == "model.dropout"
    assert cfg.grid.axes["model.dropout"] == [0.1]
    _, cfg = load_experiment("lm-sweep", overrides=["grid.axes={optim.wd_attn: [0, 3], optim.wd_mlp: 0.1}"])
    assert cfg.grid.axes == {"optim.wd_attn": [0, 3], "optim.wd_mlp": [0.1]}


def test_every_default_config_resolves():
    """The configs `make reproduce` runs all load onto their schemas (and their grids' training configs exist)."""
    from megarank.experiments.reproduce import experiment_configs

    configs = experiment_configs()
    assert set(configs) == {"factorized", "scalar", "icl", "lm-sweep", "vit-sweep", "pretrained", "qk-norm",
                            "plasticity", "qk-ov", "decay-off"}
    for name in ("lm-sweep", "vit-sweep", "qk-norm", "qk-ov", "decay-off"):
        assert (REPO / configs[name].grid.base).is_file()
    assert (REPO / configs["plasticity"].base).is_file()


def test_reproduce_report_lists_every_experiment(lm_sweep, tmp_path):
    """REPORT.md: a verdict line per finished experiment (from its summary.json), a failed line for the others,
    and each report's figures linked relative to runs/paper."""
    from megarank.experiments.registry import NAMES
    from megarank.experiments.reproduce import write_report

    root = tmp_path / "paper"
    shutil.copytree(lm_sweep / "out", root / "lm-sweep")
    outcome = {name: f"{name} not run" for name in NAMES}
    outcome["lm-sweep"] = root / "lm-sweep"
    text = write_report(outcome, root, 12.0).read_text()
    verdict = json.loads((root / "lm-sweep" / "summary.json").read_text())["verdict"]
    assert f"| **{verdict}** |" in text and "(lm-sweep/rank_vs_wd_attn.png)" in text
    assert text.count("| failed |") == len(NAMES) - 1
