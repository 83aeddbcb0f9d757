"""Fig 2 (docs/paper.md, "### icl (Fig 2)"): a 2-layer attention-only transformer on in-context linear
regression, swept over weight decay λ, under Adam + L2 and under AdamW side by side.

    config.py    Config: every knob, the check thresholds, the reference losses
    task.py      the regression task: a batch of token sequences and the query's target
    model.py     the attention-only model (megarank's projection names, so megarank.analysis reads it)
    metrics.py   per-head rank, imbalance and gap of a model (megarank-rank's code), and Run, a run's record
    train.py     one run, and the λ × optimiser × seed sweep
    tables.py    the runs as rows of numbers (summary.json, the CSVs)
    checks.py    the measured criteria behind the verdict
    figures.py   the four figures
    report.py    the sweep as a Result (checks, tables, figures)
"""

from __future__ import annotations

from megarank.experiments.icl.config import Config
from megarank.experiments.icl.report import build_result
from megarank.experiments.icl.train import sweep
from megarank.experiments.report import Result

__all__ = ["Config", "run"]


def run(cfg: Config, *, progress: bool) -> Result:
    """Train every run of the sweep, then measure it."""
    return build_result(cfg, sweep(cfg, progress))
