"""The bench's plain PyTorch loop trains the same model to the same losses as megarank (one process, fp32,
torch's AdamW under DeepSpeed on CPU), so the speed ratio bench reports compares like with like."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, TINY, clean_env, train_losses
from tests.runs import LAUNCHES

SCRIPT = """
import json, sys
from megarank.config import load_config
from megarank.bench.reference_loop import train_reference
run = train_reference(load_config("configs/default.yaml", sys.argv[1:]), 8)
print(json.dumps(run.losses))
"""


def test_reference_loop_matches_megarank(launched, tiny_corpus):
    """megarank's side is the session's shared `zero0` run (tests/runs.py): 8 steps of 4 accumulated micro
    batches, ZeRO-0."""
    overrides = [*TINY, f"data.path={tiny_corpus}", *LAUNCHES["zero0"].overrides]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *overrides], cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = [float(v) for v in proc.stdout.strip().splitlines()[-1].strip("[]").split(",")]
    megarank = train_losses(launched("zero0"))
    assert [megarank[step] for step in range(1, 9)] == pytest.approx(reference, rel=1e-5)
