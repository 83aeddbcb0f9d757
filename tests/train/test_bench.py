"""`make bench` stays runnable: tools/bench.py on a tiny GPT writes its JSON with the device named, every
attention backend that can run here agreeing with the math path, and the training figures read back from the
run."""

from __future__ import annotations

import json
import subprocess
import sys

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
