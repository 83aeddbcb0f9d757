"""decay-off at a tiny size, through `megarank-exp` (real training runs of the tiny GPT: the control keeps
λ_attn, the other switches it off after step 3 of 6, ranks logged live every step): the summary and curves
against direct readings of each run — the live rank records and the logged decay in its metrics.jsonl,
megarank-rank of the final checkpoint, megarank-eval's val perplexity — the two runs equal up to the switch,
and a grid without the control against a one-line error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from megarank.experiments.cli import main as exp_main
from tests.experiments.grids import run_grid_experiment
from tests.helpers import TINY, read_metrics

OFF_AFTER = 3


@pytest.fixture(scope="module")
def decay_off(tiny_corpus, tmp_path_factory) -> Path:
    """wd_schedule ∈ {constant, step} at λ_attn 2, 6 steps, off after step 3; returns the root."""
    return run_grid_experiment(
        "decay-off", tmp_path_factory.mktemp("decay_off"),
        [*TINY, f"data.path={tiny_corpus}", "train.max_steps=6", "analysis.every=1", "checkpoint.every=0",
         "optim.wd_attn=2.0", f"optim.wd_schedule_start={OFF_AFTER}", "optim.wd_final_ratio=0",
         "optim.wd_schedule_groups=[attn]"],
        {"optim.wd_schedule": ["constant", "step"], "seed": [5]},
        eval_batch_size=4)


def test_runs_are_read_directly(decay_off):
    from megarank.analysis.readers import open_source
    from megarank.analysis.report import analyse
    from megarank.evaluation import evaluate_checkpoint

    summary = json.loads((decay_off / "out" / "summary.json").read_text())
    assert summary["experiment"] == "decay-off" and summary["missing"] == [] and summary["n_runs"] == 2
    rows = {row["schedule"]: row for row in summary["runs"]}
    assert summary["pairs"] == [[rows["constant"]["cell"], rows["step"]["cell"]]]
    for schedule, row in rows.items():
        run = decay_off / "cells" / row["cell"]
        training = [r for r in read_metrics(run) if "loss" in r]
        decays = [r["wd/attn"] for r in training]
        assert decays == ([2.0] * 6 if schedule == "constant" else [2.0] * OFF_AFTER + [0.0] * 3)
        assert row["switch_step"] == (None if schedule == "constant" else OFF_AFTER)
        assert row["total_decay_attn"] == pytest.approx(sum(r["lr"] * r["wd/attn"] for r in training))
        with open_source(run) as source:
            means = analyse(source, rtol=0.01, atol=1e-3, progress=False).means()
        for product in ("qk", "ov"):
            assert row[f"final_{product}_rank"] == pytest.approx(means[product]["rank"])
            assert row[f"final_{product}_effective_rank"] == pytest.approx(means[product]["effective_rank"])
        assert row["val_ppl"] == pytest.approx(evaluate_checkpoint(run, split="val", batch_size=4,
                                                                   progress=False)["ppl"], rel=1e-9)
        live = {r["step"]: r for r in read_metrics(run) if "rank/qk_mean" in r}
        assert row["switch_qk_rank"] == live[OFF_AFTER]["rank/qk_mean"]
        curves = [c for c in csv.DictReader((decay_off / "out" / "curves.csv").open()) if c["schedule"] == schedule]
        assert [int(c["step"]) for c in curves] == sorted(live)
        assert [float(c["effective_rank/ov_mean"]) for c in curves] == pytest.approx(
            [live[s]["effective_rank/ov_mean"] for s in sorted(live)])


def test_the_runs_agree_up_to_the_switch_only(decay_off):
    """Same seed, same decay for 3 steps: equal live ranks up to the switch (the report's check), then apart."""
    summary = json.loads((decay_off / "out" / "summary.json").read_text())
    live = {}
    for row in summary["runs"]:
        live[row["schedule"]] = {r["step"]: r["effective_rank/qk_mean"]
                                 for r in read_metrics(decay_off / "cells" / row["cell"]) if "rank/qk_mean" in r}
    for step in range(1, OFF_AFTER + 1):
        assert live["constant"][step] == live["step"][step]
    assert live["constant"][6] != live["step"][6]
    check = next(c for c in summary["checks"] if c["name"].startswith("before the switch"))
    assert check["passed"]
    report = (decay_off / "out" / "report.md").read_text()
    assert "(rank_over_training.png)" in report and "decay off from step 3" in report
    assert (decay_off / "out" / "rank_over_training.png").stat().st_size > 1000
    assert len(summary["checks"]) == 5


def test_grid_without_the_control_is_one_line(tmp_path, capsys):
    code = exp_main(["decay-off", "grid.axes={optim.wd_schedule: [step]}", f"out_dir={tmp_path}/out",
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "constant" in err
    assert not (tmp_path / "out").exists()
