"""Tensor × data parallelism against the single-process TP=1 reference from the same seed, on CPU (gloo):
loss per step within 1e-5 relative for 8 steps, through the real CLI and DeepSpeed launcher, for
TP=2×DP=1 (ZeRO 1 and 3), TP=2×DP=2 (ZeRO 1 and 2); every parameter's gathered gradient after the first
global batch within 1e-5 of a plain single-device backward; resume at TP=2 bit for bit. The runs are the
session's shared ones (tests/runs.py); TP=2×DP=2 under ZeRO-1 is the two-node run of tests/train/test_multinode.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from megarank.config import DataInfo, load_config, resolve
from megarank.models.gpt import GPT
from megarank.data.batches import micro_batch
from megarank.data.training_data import open_text_data
from tests.helpers import REPO, TINY, clean_env, deepspeed_launcher, train_losses, train_steps

LAYOUTS = {  # name: the shared run (8 steps, checkpoints at 4 and 8)
    "tp2-dp1-zero1": "tp2-zero1",
    "tp2-dp1-zero3": "tp2-zero3",
    "tp2-dp2-zero1": "two-nodes-tp2-dp2-zero1",
    "tp2-dp2-zero2": "tp2-dp2-zero2",
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_loss_matches_single_process(name, launched, reference_run):
    reference, losses = train_losses(reference_run), train_losses(launched(LAYOUTS[name]))
    assert sorted(losses) == list(range(1, 9))
    for step, expected in reference.items():
        assert losses[step] == pytest.approx(expected, rel=1e-5), f"step {step}"


def test_resume_at_tp2_is_bitwise(launched, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(launched("tp2-zero1"), run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "global_step8")
    launched.relaunch("tp2-zero1", run_dir)
    assert train_losses(run_dir) == train_losses(launched("tp2-zero1"))
    assert train_steps(run_dir) == list(range(1, 9))


def reference_gradients(corpus) -> dict[str, torch.Tensor]:
    """Plain PyTorch, one device: gradient of the global batch's mean loss."""
    cfg = load_config("configs/default.yaml", [*TINY, f"data.path={corpus}"])
    data = open_text_data(cfg.data, seq_len=cfg.model.seq_len, seed=cfg.seed, show_progress=False)
    cfg = resolve(cfg, DataInfo(vocab_size=data.vocab_size))
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model)
    n_micro = cfg.train.global_batch // cfg.train.micro_batch
    for i in range(n_micro):
        x, y = micro_batch(data, batch_start=0, micro_step=i, dp_rank=0, dp_size=1,
                           micro_batch=cfg.train.micro_batch, device=torch.device("cpu"))
        (model(x, y) / n_micro).backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("tp, nproc, stage", [(2, 4, 1), (2, 2, 2)])
def test_gathered_gradients_match_single_device(tp, nproc, stage, tiny_corpus, tmp_path):
    out = tmp_path / "grads.pt"
    cmd = [*deepspeed_launcher(nproc), str(REPO / "tests/parallel/grad_driver.py"), str(out), "configs/default.yaml",
           *TINY, f"data.path={tiny_corpus}", f"parallel.tp={tp}", f"zero.stage={stage}"]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    grads, expected = torch.load(out), reference_gradients(tiny_corpus)
    assert sorted(grads) == sorted(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
