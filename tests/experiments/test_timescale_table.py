"""report.timescale_table against records laid out by hand as megarank-sweep gather writes them: one row per
cell and decay group, the axes first, an infinite τ (no decay) left blank in report.md."""

from __future__ import annotations

from megarank.experiments.report import markdown_table, timescale_table


def test_one_row_per_cell_and_group():
    records = [{"optim.wd_attn": 0.0, "cell": "wd_attn0", "sum_lr_wd/attn": 0.0, "tau_steps/attn": None,
                "tau_epochs/attn": None, "sum_lr_wd/mlp": 0.5, "tau_steps/mlp": 1e4, "tau_epochs/mlp": 20.0},
               {"optim.wd_attn": 1.0, "cell": "wd_attn1", "sum_lr_wd/qk": 2.0, "tau_steps/qk": 1e3,
                "tau_epochs/qk": None, "loss": 3.0}]
    table = timescale_table(records, ["optim.wd_attn"])
    assert table.columns == ("optim.wd_attn", "cell", "group", "sum_lr_wd", "tau_steps", "tau_epochs")
    assert [(r["cell"], r["group"], r["sum_lr_wd"]) for r in table.rows] == [
        ("wd_attn0", "attn", 0.0), ("wd_attn0", "mlp", 0.5), ("wd_attn1", "qk", 2.0)]
    assert table.rows[1]["tau_epochs"] == 20.0 and table.rows[2]["optim.wd_attn"] == 1.0
    assert "| 0 | wd_attn0 | attn | 0 |  |  |" in markdown_table(table.columns, table.rows)
