"""make bench-data end to end at a tiny size: it generates its Pile-shaped input, measures the encode limit,
runs tools/preprocess.py as a user would and reports every figure the goals name, with the token count equal
to the shards it wrote (no timing is asserted: speed lives in the benchmark, not in tests)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO, clean_env


def test_bench_data_reports_every_figure(tmp_path):
    out = tmp_path / "bench_data.json"
    proc = subprocess.run([sys.executable, "tools/bench_data.py", "--mb", "1", "--train-files", "2",
                           "--vocab-size", "1024", "--json", str(out)], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = json.loads(out.read_text())
    assert row["input_files"] == 4 and row["num_proc"] == 2 and 0.9 < row["input_mb_text"] < 1.2
    assert row["tokens"] > 0 and row["output_mb"] * 1e6 == 2 * row["tokens"]  # uint16 shards
    assert row["encode_limit_tokens_per_s_per_core"] > 0 and row["fraction_of_n_cores_limit"] > 0
    assert 0 < row["peak_rss_mb"] and 0 <= row["extra_disk_fraction"] < 0.1
    assert "| input (MB of text) |" in proc.stdout
