"""The bench's plain PyTorch loop trains the same model to the same losses as megarank (one process, fp32,
torch's AdamW under DeepSpeed on CPU), so the speed ratio bench reports compares like with like."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, TINY, clean_env, run_training, train_losses

SCRIPT = """
import json, sys
from megarank.config import load_config
from megarank.bench.reference_loop import train_reference
run = train_reference(load_config("configs/default.yaml", sys.argv[1:]), 8)
print(json.dumps(run.losses))
"""


def test_reference_loop_matches_megarank(tiny_corpus, tmp_path):
    overrides = [*TINY, f"data.path={tiny_corpus}", "train.max_steps=8", "zero.stage=0", "train.global_batch=4",
                 "train.micro_batch=2"]  # two accumulation steps
    run_training(tmp_path / "run", tiny_corpus, *overrides[len(TINY) + 1:], "checkpoint.every=0")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *overrides], cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = [float(v) for v in proc.stdout.strip().splitlines()[-1].strip("[]").split(",")]
    megarank = train_losses(tmp_path / "run")
    assert [megarank[step] for step in range(1, 9)] == pytest.approx(reference, rel=1e-5)
