"""qk-norm at a tiny size, through `megarank-exp` (real training runs of the tiny LLaMA block, with and without the
per-head q/k norms): each cell of summary.json against direct computations on its run — megarank-rank of the final
checkpoint (rank, effective rank, balance), megarank-eval's val perplexity, Σ lr·λ from the run's metrics.jsonl,
the norm present in the checkpoint exactly when the cell says so — and a grid without the norm axis against a
one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megarank.experiments.cli import main as exp_main
from tests.experiments.grids import run_grid_experiment
from tests.helpers import LLAMA_TINY, read_metrics


@pytest.fixture(scope="module")
def qk_norm(tiny_corpus, tmp_path_factory) -> Path:
    """λ_attn ∈ {0, 2} × qk_norm ∈ {false, true}, 3 steps a cell; returns the root."""
    return run_grid_experiment(
        "qk-norm", tmp_path_factory.mktemp("qk_norm"),
        [*LLAMA_TINY, f"data.path={tiny_corpus}", "train.max_steps=3", "analysis.every=0", "checkpoint.every=0"],
        {"optim.wd_attn": [0.0, 2.0], "model.qk_norm": [False, True], "seed": [5]},
        eval_batch_size=4, rank_drop_min=0.0)


def test_cells_are_their_runs_measured_directly(qk_norm):
    import torch

    from megarank.analysis.readers import open_source
    from megarank.analysis.report import analyse
    from megarank.evaluation import evaluate_checkpoint
    from megarank.evaluation.load import load_gpt

    summary = json.loads((qk_norm / "out" / "summary.json").read_text())
    assert summary["experiment"] == "qk-norm" and summary["missing"] == [] and summary["n_runs"] == 4
    assert sorted((c["wd_attn"], c["qk_norm"]) for c in summary["cells"]) == [(0.0, False), (0.0, True),
                                                                              (2.0, False), (2.0, True)]
    for cell in summary["cells"]:
        run, = (qk_norm / "cells").glob(f"wd_attn{cell['wd_attn']!r}-qk_norm{str(cell['qk_norm']).lower()}-*")
        with open_source(run) as source:
            means = analyse(source, rtol=0.01, atol=1e-3, progress=False).means()
        for product in ("qk", "ov"):
            for metric in ("rank", "effective_rank", "balance"):
                assert cell[f"{product}_{metric}"] == pytest.approx(means[product][metric])
        assert cell["val_ppl"] == pytest.approx(evaluate_checkpoint(run, split="val", batch_size=4,
                                                                    progress=False)["ppl"], rel=1e-9)
        lrs = [r["lr"] for r in read_metrics(run) if "lr" in r]
        assert cell["total_decay"] == pytest.approx(cell["wd_attn"] * sum(lrs))
        names = load_gpt(run).model.state_dict()
        assert any("q_norm" in name for name in names) == cell["qk_norm"]
        assert all(torch.isfinite(t).all() for t in names.values())


def test_report_files(qk_norm):
    out = qk_norm / "out"
    report = (out / "report.md").read_text()
    assert "with QK-norm the QK rank drop" in report and "(rank_vs_wd_attn.png)" in report
    assert (out / "rank_vs_wd_attn.png").stat().st_size > 1000 and (out / "cells.csv").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["checks"]) == 3 and summary["verdict"] in ("reproduced", "partly", "not")


def test_grid_without_the_norm_axis_is_one_line(tmp_path, capsys):
    code = exp_main(["qk-norm", "grid.axes={optim.wd_attn: [0, 1]}", f"out_dir={tmp_path}/out", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "model.qk_norm" in err
    assert not (tmp_path / "out").exists()
