"""An error on one rank ends the whole multi-process job within a minute, named with its rank and host; no rank
is left waiting in a collective. Real launches on CPU:

- set-up: data.path (under ~) exists only on the first of two simulated nodes (tools/launch_node.sh, one
  process each, a HOME of their own); both nodes exit 2, and rank 0 prints rank 1's message;
- training: rank 1 of 2 (DeepSpeed launcher) hits an I/O error reading its third micro batch; it prints the
  error with its traceback, rank 0 says that another rank stopped, and the job exits non-zero;
- the rank list of a failure that several ranks share, against hand-written expectations.
"""

from __future__ import annotations

import socket
import subprocess
import time

from tests.helpers import REPO, TINY, clean_env, deepspeed_launcher, free_port


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_data_missing_on_the_second_node_stops_both_nodes(tiny_corpus, tmp_path):
    homes = [tmp_path / "home0", tmp_path / "home1"]
    for home in homes:
        home.mkdir()
    (homes[0] / "shards").symlink_to(tiny_corpus)  # node 0's local copy of the data; node 1 has none
    run_dir = tmp_path / "run"
    args = ["configs/default.yaml", *TINY, "data.path=~/shards", f"train.run_dir={run_dir}", "train.max_steps=4"]
    port, start = str(free_port()), time.monotonic()
    nodes = [subprocess.Popen(["bash", "tools/launch_node.sh", *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=clean_env(HOME=str(homes[rank]), NNODES="2", NODE_RANK=str(rank), NPROC="1",
                                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=120)[0] for node in nodes]
    assert time.monotonic() - start < 60
    assert [node.returncode for node in nodes] == [2, 2], outputs[0][-3000:] + outputs[1][-3000:]
    host = socket.gethostname()
    assert error_lines(outputs[0]) == [f"error: [rank 1 on {host}] data.path '{homes[1]}/shards' has no "
                                       "train/index.json; make shards with tools/preprocess.py SOURCE --tokenizer M "
                                       "--out DIR, or unset data.path"]
    assert error_lines(outputs[1]) == []  # same host as rank 0: one log, one line
    assert "Traceback" not in outputs[0] + outputs[1]
    assert not run_dir.exists()


def test_io_error_on_one_rank_mid_run_ends_the_job(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [*deepspeed_launcher(2), "tests/train/fail_mid_run.py", "configs/default.yaml", *TINY,
           f"data.path={tiny_corpus}", f"train.run_dir={run_dir}", "train.max_steps=4"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(FAIL_RANK="1"), capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 60
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    host = socket.gethostname()
    errors = error_lines(proc.stderr)
    assert f"error: [rank 1 on {host}] unexpected OSError: [Errno 5] Input/output error: 'shard_00000.bin'" in errors
    assert [e for e in errors if e.startswith(f"error: [rank 0 on {host}] another rank stopped")], output
    assert output.count("Traceback") == 1  # rank 1's, for the bug report; rank 0's would only be noise
    assert not (run_dir / "checkpoints").exists()


def test_failing_ranks_are_named_compactly_per_host():
    from megarank.train.failures import _ranks_text

    assert _ranks_text([(9, "b"), (1, "a")]) == "rank 1 on a, rank 9 on b"
    assert _ranks_text([(r, "node2") for r in range(8, 16)]) == "ranks 8-15 on node2"
    assert _ranks_text([(0, "a"), (2, "a"), (3, "a")]) == "ranks 0, 2-3 on a"
