"""Room for a checkpoint (megarank/ckpt/space.py, train/checkpoint.py save_checkpoint) without root or a small
file system: shutil.disk_usage is monkeypatched to report a nearly full disk, and a write that fails as on a
full disk is made by lowering RLIMIT_FSIZE around torch.save, so torch's own zip writer raises its own error
("[enforce fail at inline_container.cc] unexpected pos ...", the one a full tmpfs gives).

- In one process (a gloo process group of one, an engine stand-in that writes DeepSpeed's module file with
  torch.save): a save the previous checkpoint's size says will not fit is refused before anything is written;
  a save whose write fails on a full disk is one line naming the directory, its free space and the size a
  checkpoint needs (the previous one's, or estimated from the parameter count before the first); a torch
  write error with room left is not mistaken for a full disk. No cut-short tag ever gets a marker.
- A real 2-process run (tests/ckpt/nearly_full_disk.py) stops before its second save on every rank, one
  `error:` line, exit 2, its first checkpoint intact and still `latest`.
"""

from __future__ import annotations

import errno
import resource
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from megarank.ckpt import space
from megarank.ckpt.manifest import verify_tag
from megarank.ckpt.marker import Marker
from megarank.ckpt.tags import is_complete
from megarank.config.schema import ModelConfig
from megarank.errors import CollectiveError, MegarankError
from megarank.models.gpt import GPT
from megarank.train.checkpoint import save_checkpoint
from tests.helpers import REPO, TINY, VENV_BIN, clean_env, free_port

MODEL = ModelConfig(n_layers=2, d_model=32, n_heads=4, seq_len=16, vocab_size=256)
META = {"layout": {"tp": 1, "dp": 1, "world_size": 1}, "zero_stage": 0, "config": "model: {n_layers: 2}\n",
        "data": {}}


@contextmanager
def file_size_limit(n_bytes: int | None):
    """Writes beyond n_bytes fail (EFBIG; Python ignores SIGXFSZ), as writes on a full disk do."""
    if n_bytes is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


class EngineStandIn:
    """What save_checkpoint uses of a DeepSpeed engine: `module`, and save_checkpoint, which writes DeepSpeed's
    module file with torch.save (DeepSpeed's checkpoint engine does the same)."""

    def __init__(self, file_size_limit: int | None = None):
        torch.manual_seed(0)
        self.module = GPT(MODEL)
        self.limit = file_size_limit
        self.saves = 0

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        self.saves += 1
        path = Path(save_dir) / tag / "mp_rank_00_model_states.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_size_limit(self.limit):
            torch.save({"module": self.module.state_dict(), **client_state}, path)


@pytest.fixture
def one_process_group(tmp_path):
    if dist.is_initialized():  # an in-process engine test (deepspeed.initialize) left its one-process group
        assert dist.get_world_size() == 1
        yield
        return
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def nearly_full(monkeypatch, free: int, *then: int):
    """shutil.disk_usage reports `free` bytes free, then (one call each) `then`, the last one from there on."""
    real, answers = shutil.disk_usage, [free, *then]
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: real(path)._replace(free=answers.pop(0) if len(answers) > 1 else answers[0]))


def save(engine, ckpt_dir, step):
    return save_checkpoint(engine, ckpt_dir, step, {"megarank": {"step": step}}, META)


def test_a_save_that_will_not_fit_is_refused_before_writing(one_process_group, tmp_path, monkeypatch):
    ckpt, engine = tmp_path / "checkpoints", EngineStandIn()
    save(engine, ckpt, 1)
    size = Marker.read(ckpt / "global_step1").n_bytes
    nearly_full(monkeypatch, size - 1)
    with pytest.raises(CollectiveError) as caught:
        save(engine, ckpt, 2)
    assert str(caught.value) == (
        f"checkpoint.dir '{ckpt}' has {space.human_bytes(size - 1)} free, a checkpoint needs "
        f"{space.human_bytes(size)} (the size of global_step1): not saving global_step2; free space there, keep "
        "fewer checkpoints (checkpoint.keep_last) or set checkpoint.dir to a larger disk")
    assert engine.saves == 1 and not (ckpt / "global_step2").exists()
    assert (ckpt / "latest").read_text() == "global_step1" and verify_tag(ckpt / "global_step1").ok
    nearly_full(monkeypatch, size)  # exactly enough: saved
    save(engine, ckpt, 2)
    assert is_complete(ckpt / "global_step2")


def test_a_disk_that_fills_during_the_save_is_one_line(one_process_group, tmp_path, monkeypatch):
    ckpt, engine = tmp_path / "checkpoints", EngineStandIn(file_size_limit=4096)
    nearly_full(monkeypatch, 1000)
    with pytest.raises(MegarankError) as caught:
        save(engine, ckpt, 1)
    assert "unexpected pos" in str(caught.value.__cause__)  # torch's own zip-writer error underneath
    n_params = sum(p.numel() for p in engine.module.parameters())
    assert str(caught.value) == (
        f"checkpoint.dir '{ckpt}' ran out of space saving global_step1 (1 kB free, a checkpoint needs "
        f"{space.human_bytes(16 * n_params)}, estimated at 16 bytes per parameter); free space there, keep fewer "
        "checkpoints (checkpoint.keep_last) or set checkpoint.dir to a larger disk; global_step1 was cut short "
        "(no marker) and is never resumed from")
    assert not is_complete(ckpt / "global_step1") and not (ckpt / "latest").exists()

    engine.limit = None
    monkeypatch.undo()
    save(engine, ckpt, 1)  # room again: the cut-short tag is replaced
    size = Marker.read(ckpt / "global_step1").n_bytes
    engine.limit = 4096
    nearly_full(monkeypatch, size + 1, 100)  # room before the save (the check passes); the disk fills during it
    with pytest.raises(MegarankError, match=rf"ran out of space saving global_step2 \(100 B free, a checkpoint "
                                            rf"needs {space.human_bytes(size)}, the size of global_step1\)"):
        save(engine, ckpt, 2)
    assert (ckpt / "latest").read_text() == "global_step1" and not is_complete(ckpt / "global_step2")


def test_a_write_error_with_room_left_is_not_a_full_disk(one_process_group, tmp_path):
    engine = EngineStandIn(file_size_limit=4096)  # the real disk has room: EFBIG is the cause, not ENOSPC
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save(engine, tmp_path / "checkpoints", 1)


def test_what_counts_as_out_of_space(tmp_path, monkeypatch):
    need = space.Need(10_000, "the size of global_step1")
    assert space.is_out_of_space(OSError(errno.ENOSPC, "No space left on device"), tmp_path, need)
    assert space.is_out_of_space(RuntimeError("write(): fd 3 failed with No space left on device"), tmp_path, need)
    assert not space.is_out_of_space(OSError(errno.EIO, "Input/output error"), tmp_path, need)
    zip_writer = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 6656 vs 6550")
    assert not space.is_out_of_space(zip_writer, tmp_path, need)  # this disk has room
    nearly_full(monkeypatch, 9_999)
    assert space.is_out_of_space(zip_writer, tmp_path, need)
    assert not space.is_out_of_space(ValueError("unexpected pos"), tmp_path, need)
    assert space.free_bytes(tmp_path / "not" / "made" / "yet") == 9_999  # measured on the nearest existing dir
    assert [space.human_bytes(n) for n in (999, 1500, 2_340_000, 5.1e9)] == ["999 B", "1.5 kB", "2.34 MB", "5.1 GB"]


def test_a_launched_run_stops_on_every_rank_before_a_save_that_will_not_fit(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           "tests/ckpt/nearly_full_disk.py", "configs/default.yaml", *TINY, f"data.path={tiny_corpus}",
           f"train.run_dir={run_dir}", "train.max_steps=3", "checkpoint.every=1", "zero.stage=1"]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(FREE_BYTES="1000"), capture_output=True, text=True,
                          timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    ckpt = run_dir / "checkpoints"
    size = Marker.read(ckpt / "global_step1").n_bytes
    assert errors == [f"error: checkpoint.dir '{ckpt}' has 1 kB free, a checkpoint needs {space.human_bytes(size)} "
                      "(the size of global_step1): not saving global_step2; free space there, keep fewer checkpoints "
                      "(checkpoint.keep_last) or set checkpoint.dir to a larger disk"]
    assert not (ckpt / "global_step2").exists() and (ckpt / "latest").read_text() == "global_step1"
    assert verify_tag(ckpt / "global_step1").ok
