"""DeepSpeed's CPU shared-memory all-reduce leaves a ~69 MB /dev/shm file per process behind after every run
(it never unlinks it); megarank unlinks each rank's name once every rank has mapped every buffer, so runs leave
nothing in RAM. Checked on DeepSpeed's own init (the file appears) and on a real 2-process run (the session's
shared `dp2-zero1`, tests/runs.py): no buffer of that run's job (its master port) is left."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO, clean_env, free_port
from tests.runs import shm_buffers

SCRIPT = """
import os, deepspeed, torch
from megarank.train.distributed import release_shm_name, shm_buffer_path
deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
path = shm_buffer_path(0)
print("created", path.exists(), path.stat().st_size if path.exists() else 0)
release_shm_name()
print("after release", path.exists())
torch.distributed.all_reduce(torch.ones(4))  # the mapping outlives the name
"""


def test_deepspeed_creates_the_buffer_and_release_unlinks_it():
    # LOCAL_SIZE == WORLD_SIZE (as the DeepSpeed launcher sets it) is what turns the shm all-reduce on
    env = clean_env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1", MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(free_port()))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    created = next(line for line in proc.stdout.splitlines() if line.startswith("created")).split()
    assert created[1] == "True" and int(created[2]) > 1 << 20
    assert "after release False" in proc.stdout


def test_runs_leave_no_shared_memory_behind(launched):
    run = launched.get("dp2-zero1")
    assert not shm_buffers(run.port)
