"""`megarank-sweep list` into a reader that has gone away (`| head`): exit 141 as a shell reports a closed pipe,
and no traceback — compared with a pipe whose read end is closed before the command writes."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import REPO, clean_env
from tests.sweep.conftest import write_grid


def test_list_into_a_closed_pipe_is_quiet(tiny_corpus, tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", tiny_corpus, tmp_path / "runs")
    read, write = os.pipe()
    os.close(read)  # every write now fails with EPIPE, as after `head` has exited
    try:
        proc = subprocess.run([sys.executable, "-m", "megarank.sweep.cli", "list", str(grid)], cwd=REPO,
                              stdout=write, stderr=subprocess.PIPE, text=True, env=clean_env(), timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
