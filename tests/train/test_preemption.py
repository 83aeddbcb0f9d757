"""Preemption: SIGTERM finishes the step, saves and exits 0, and the run resumes from there; SIGKILL in the
middle of a save leaves the previous checkpoint as the one `auto` resumes from, and the finished run equals
the uninterrupted reference bit for bit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from megarank.ckpt.tags import COMPLETE_MARKER, complete_checkpoints
from tests.helpers import REPO, TINY, clean_env, read_metrics, run_training, train_losses, train_steps


def test_sigterm_saves_and_exits_cleanly(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "megarank.train", "configs/default.yaml", *TINY, f"data.path={tiny_corpus}",
           f"train.run_dir={run_dir}", "train.max_steps=100000", "checkpoint.every=0"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]

    saved = complete_checkpoints(run_dir / "checkpoints")
    last_logged = read_metrics(run_dir)[-1]["step"]
    assert [step for step, _ in saved] == [last_logged] and last_logged >= 3
    marker = json.loads((saved[0][1] / COMPLETE_MARKER).read_text())
    assert marker["step"] == last_logged and marker["layout"] == {"tp": 1, "dp": 1, "world_size": 1}

    run_training(run_dir, tiny_corpus, "train.max_steps=%d" % (last_logged + 2), "checkpoint.every=0")
    assert train_steps(run_dir) == list(range(1, last_logged + 3))


def test_sigkill_during_save_falls_back_to_previous(reference_run, tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*TINY, f"data.path={tiny_corpus}", f"train.run_dir={run_dir}", "train.max_steps=8",
                 "checkpoint.every=4", "zero.stage=1"]
    killed = subprocess.run([sys.executable, str(REPO / "tests/train/kill_during_save.py"), "configs/default.yaml",
                             *overrides], cwd=REPO, env=clean_env(KILL_DURING_SAVE_TAG="global_step8"),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    half_written = run_dir / "checkpoints" / "global_step8"
    assert half_written.is_dir() and not (half_written / COMPLETE_MARKER).exists()
    assert [step for step, _ in complete_checkpoints(run_dir / "checkpoints")] == [4]

    run_training(run_dir, tiny_corpus, "train.max_steps=8", "checkpoint.every=4", "zero.stage=1")
    assert train_losses(run_dir) == train_losses(reference_run)
    assert [step for step, _ in complete_checkpoints(run_dir / "checkpoints")] == [4, 8]
