"""Two "nodes" × 2 CPU processes on localhost through tools/launch_node.sh — DeepSpeed's per-node launcher
with node ranks and a master address, as on a cluster — training TP=2 inside each node and DP=2 across them
(the session's shared `two-nodes-tp2-dp2-zero1` run, tests/runs.py); the run's losses match the
single-process reference within 1e-5, and its val_loss equals one process's validation of the weights it saved
within 1e-6."""

from __future__ import annotations

import json

import pytest

from megarank.train.checkpoint import COMPLETE_MARKER
from tests.helpers import read_metrics, train_losses
from tests.train.test_validation import val_loss_in_one_process


def test_two_nodes_of_two_processes(reference_run, launched):
    run_dir = launched("two-nodes-tp2-dp2-zero1")
    marker = json.loads((run_dir / "checkpoints" / "global_step8" / COMPLETE_MARKER).read_text())
    assert marker["layout"] == {"tp": 2, "dp": 2, "world_size": 4}
    reference, losses = train_losses(reference_run), train_losses(run_dir)
    assert sorted(losses) == list(range(1, 9))
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], rel=1e-5), f"step {step}"
    [val] = [r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r]
    assert val == pytest.approx(val_loss_in_one_process(run_dir), rel=1e-6)
