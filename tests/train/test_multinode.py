"""Two "nodes" × 2 CPU processes on localhost through tools/launch_node.sh — DeepSpeed's per-node launcher
with node ranks and a master address, as on a cluster — training TP=2 inside each node and DP=2 across them;
the run's losses match the single-process reference within 1e-5, and its val_loss equals one process's
validation of the weights it saved within 1e-6."""

from __future__ import annotations

import json
import subprocess

import pytest

from megarank.train.checkpoint import COMPLETE_MARKER
from tests.helpers import REPO, TINY, clean_env, free_port, read_metrics, train_losses
from tests.train.test_validation import val_loss_in_one_process


def test_two_nodes_of_two_processes(reference_run, tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = ["configs/default.yaml", *TINY, f"data.path={tiny_corpus}", f"train.run_dir={run_dir}",
            "train.max_steps=4", "checkpoint.every=0", "parallel.tp=2", "zero.stage=1", "train.eval_every=4"]
    port = str(free_port())
    nodes = [subprocess.Popen(["bash", "tools/launch_node.sh", *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=clean_env(NNODES="2", NODE_RANK=str(rank), NPROC="2", MASTER_ADDR="127.0.0.1",
                                            MASTER_PORT=port))
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    marker = json.loads((run_dir / "checkpoints" / "global_step4" / COMPLETE_MARKER).read_text())
    assert marker["layout"] == {"tp": 2, "dp": 2, "world_size": 4}
    reference, losses = train_losses(reference_run), train_losses(run_dir)
    assert sorted(losses) == [1, 2, 3, 4]
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], rel=1e-5), f"step {step}"
    [val] = [r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r]
    assert val == pytest.approx(val_loss_in_one_process(run_dir), rel=1e-6)
