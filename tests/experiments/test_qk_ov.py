"""qk-ov at a tiny size, through `megarank-exp` (real training runs of the tiny GPT over wd_qk × wd_ov): each cell
of summary.json against direct computations on its run — megarank-rank of the final checkpoint (rank, effective
rank, balance), megarank-eval's val perplexity, each product's Σ lr·λ from the run's logged learning rates, the
decay each product's group logged — the perplexity costs against the corners' perplexities, and a grid without
the wd_ov axis against a one-line error. The QK axis is optim.wd_attn (wd_qk null): see qk_ov.py's docstring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megarank.experiments.cli import main as exp_main
from tests.experiments.grids import run_grid_experiment
from tests.helpers import TINY, read_metrics


@pytest.fixture(scope="module")
def qk_ov(tiny_corpus, tmp_path_factory) -> Path:
    """λ_qk ∈ {0, 2} (optim.wd_attn, wd_qk null) × wd_ov ∈ {0, 2}, 3 steps a cell; returns the root."""
    return run_grid_experiment(
        "qk-ov", tmp_path_factory.mktemp("qk_ov"),
        [*TINY, f"data.path={tiny_corpus}", "train.max_steps=3", "analysis.every=0", "checkpoint.every=0"],
        {"optim.wd_attn": [0.0, 2.0], "optim.wd_ov": [0.0, 2.0], "seed": [5]},
        eval_splits=["val"], eval_batch_size=4, rank_drop_min=0.0)


def test_cells_are_their_runs_measured_directly(qk_ov):
    from megarank.analysis.readers import open_source
    from megarank.analysis.report import analyse
    from megarank.evaluation import evaluate_checkpoint

    summary = json.loads((qk_ov / "out" / "summary.json").read_text())
    assert summary["experiment"] == "qk-ov" and summary["missing"] == [] and summary["n_runs"] == 4
    assert sorted((c["wd_qk"], c["wd_ov"]) for c in summary["cells"]) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    for cell in summary["cells"]:
        run, = (qk_ov / "cells").glob(f"wd_attn{cell['wd_qk']!r}-wd_ov{cell['wd_ov']!r}-*")
        with open_source(run) as source:
            means = analyse(source, rtol=0.01, atol=1e-3, progress=False).means()
        for product in ("qk", "ov"):
            for metric in ("rank", "effective_rank", "balance"):
                assert cell[f"{product}_{metric}"] == pytest.approx(means[product][metric])
        assert cell["val_ppl"] == pytest.approx(evaluate_checkpoint(run, split="val", batch_size=4,
                                                                    progress=False)["ppl"], rel=1e-9)
        training = [r for r in read_metrics(run) if "loss" in r]
        lr_sum = sum(r["lr"] for r in training)
        split = cell["wd_qk"] != cell["wd_ov"]
        for product, wd in (("qk", cell["wd_qk"]), ("ov", cell["wd_ov"])):
            assert cell[f"total_decay_{product}"] == pytest.approx(wd * lr_sum)
            logged = {r[f"wd/{product}" if split else "wd/attn"] for r in training}
            assert logged == {wd}  # the product's own group carried its decay at every step


def test_costs_are_the_corners_perplexities(qk_ov):
    summary = json.loads((qk_ov / "out" / "summary.json").read_text())
    ppl = {(c["wd_qk"], c["wd_ov"]): c["val_ppl"] for c in summary["cells"]}
    assert summary["compared"] == "val"
    assert summary["ppl_cost"]["qk"] == pytest.approx(ppl[(2, 0)] / ppl[(0, 0)] - 1)
    assert summary["ppl_cost"]["ov"] == pytest.approx(ppl[(0, 2)] / ppl[(0, 0)] - 1)
    assert summary["costlier"] == max(("qk", "ov"), key=lambda p: summary["ppl_cost"][p])
    out = qk_ov / "out"
    report = (out / "report.md").read_text()
    assert "**Headline:**" in report and "(grid.png)" in report and "costs val perplexity" in report
    assert (out / "grid.png").stat().st_size > 1000 and {"cells.csv", "timescales.csv"} <= {p.name for p in
                                                                                              out.iterdir()}
    assert len(summary["checks"]) == 4


def test_grid_without_the_ov_axis_is_one_line(tmp_path, capsys):
    code = exp_main(["qk-ov", "grid.axes={optim.wd_attn: [0, 1]}", f"out_dir={tmp_path}/out", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "optim.wd_ov" in err
    assert not (tmp_path / "out").exists()
