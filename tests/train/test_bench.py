"""`make bench` stays runnable: tools/bench.py on a tiny GPT writes its JSON with the device named, every
attention backend that can run here agreeing with the math path, and the training figures read back from the
run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, TINY, clean_env


def test_bench_writes_kernel_and_training_figures(tiny_corpus, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "tools/bench.py", "--json", str(out), "--steps", "7",
                           "--config", "configs/default.yaml", *TINY, f"data.path={tiny_corpus}"],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["device"].startswith("CPU")
    assert {row["backend"] for row in results["attention"]} == {"math", "sdpa"}
    for row in results["attention"]:
        assert row["fwd_bwd_ms"] > 0 and row["max_abs_diff_vs_math"] < 1e-5
    training = results["training"]
    assert training["steps"] == 7 and training["tokens_per_s"] > 0 and training["final_loss"] > 0
    assert results["matmul"]["tflops"] > 0
    assert 0 < training["vs_matmul_ceiling"] < 1  # a training step cannot beat one big matmul
    levers = {row["variant"]: row for row in results["levers"]}
    assert set(levers) == {"plain PyTorch loop", "megarank", "compile", "ac_full", "ac_selective",
                            "chunked_loss"}
    for row in levers.values():
        assert row["tokens_per_s"] > 0 and row["peak_rss_mb"] > 0
    assert levers["plain PyTorch loop"]["vs_reference"] == 1
    # the same model, data and optimizer: every variant ends at the same loss (float noise apart)
    for name in ("megarank", "compile", "ac_full", "ac_selective", "chunked_loss"):
        assert levers[name]["final_loss"] == pytest.approx(levers["plain PyTorch loop"]["final_loss"], rel=1e-4)
