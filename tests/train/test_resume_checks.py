"""Resuming with changed settings, against the single-process reference run (global_batch 8, checkpoints at
steps 4 and 8).

A changed train.global_batch continues from the samples consumed: through the task, the sequences of the
resumed steps equal the straight run's at the same sampler positions; in a real run the logged and saved
consumed_samples continue across the resume. Settings that cannot continue (sequence length, model shape,
training data, tokenizer) are refused against the reference's real completion marker, and through
megarank-train in one line with exit 2.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from megarank.config import load_config
from megarank.errors import MegarankError
from megarank.parallel.layout import ParallelLayout
from megarank.train.resume_checks import check_resume
from megarank.train.tasks import TextTask
from tests.helpers import TINY, read_metrics, run_cli, run_training


def task_with(config, *overrides) -> TextTask:
    cfg = load_config(config, list(overrides))
    one_process = ParallelLayout(tp_size=1, dp_size=1, tp_rank=0, dp_rank=0, tp_group=None, dp_group=None)
    return TextTask(cfg, one_process, torch.device("cpu"), show_progress=False)


def inputs(task: TextTask, consumed_samples: int, steps: int) -> torch.Tensor:
    """The input sequences of `steps` steps from consumed_samples on, in sampler-position order."""
    batches = task.train_batches(consumed_samples)
    micro_steps = steps * task.cfg.train.global_batch // task.cfg.train.micro_batch
    return torch.cat([next(batches)[0] for _ in range(micro_steps)])


def test_doubled_global_batch_trains_on_the_straight_runs_next_sequences(reference_run):
    config = reference_run / "config.yaml"  # the reference's resolved config: global_batch 8, micro_batch 2
    straight = inputs(task_with(config), 0, 8)
    resumed = inputs(task_with(config, "train.global_batch=16"), 32, 2)  # resumed at step 4 = 32 samples
    assert torch.equal(resumed, straight[32:])


def test_doubled_global_batch_resume_continues_consumed_samples(reference_run, tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "global_step8")
    proc = run_training(run_dir, tiny_corpus, "train.max_steps=6", "checkpoint.every=4", "zero.stage=1",
                        "train.global_batch=16")
    assert "resumed from" in proc.stderr and "at step 4, 32 samples consumed" in proc.stderr

    training = [r for r in read_metrics(run_dir) if "loss" in r]
    assert [(r["step"], r["consumed_samples"]) for r in training] == [(1, 8), (2, 16), (3, 24), (4, 32),
                                                                      (5, 48), (6, 64)]
    saved = torch.load(run_dir / "checkpoints/global_step6/mp_rank_00_model_states.pt", weights_only=False)
    assert saved["megarank"]["sampler"]["consumed_samples"] == 64


@pytest.mark.parametrize("override, expected", [
    ("model.n_layers=3", "trained with model.n_layers=2; this run has 3 — resume with model.n_layers=2"),
    ("model.d_model=64", "trained with model.d_model=32; this run has 64"),
    ("model.tie_embeddings=false", "trained with model.tie_embeddings=true; this run has false"),
    ("seed=7", "trained with seed=1234; this run has 7"),
])
def test_shape_and_seed_changes_are_refused(reference_run, override, expected):
    config, tag = reference_run / "config.yaml", reference_run / "checkpoints" / "global_step4"
    identity = task_with(config).data_identity
    check_resume(tag, load_config(config), identity)  # the saved settings themselves pass
    with pytest.raises(MegarankError, match=expected):
        check_resume(tag, load_config(config, [override]), identity)


@pytest.mark.parametrize("key, named", [("tokenizer_sha256", "data made with tokenizer sha256"),
                                        ("train_sha256", "training shards with sha256")])
def test_other_data_or_tokenizer_is_refused(reference_run, key, named):
    identity = dict(task_with(reference_run / "config.yaml").data_identity)
    identity[key] = "0" * 64
    with pytest.raises(MegarankError, match=f"trained on {named} [0-9a-f]{{12}}; .* has 000000000000"):
        check_resume(reference_run / "checkpoints" / "global_step4", load_config(reference_run / "config.yaml"),
                     identity)


def test_seq_len_change_is_one_line_exit_2(reference_run, tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    before = (run_dir / "metrics.jsonl").read_text()
    proc = run_cli("configs/default.yaml", *TINY, f"data.path={tiny_corpus}", f"train.run_dir={run_dir}",
                   "model.seq_len=32")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors == ["error: checkpoint global_step8 was trained with model.seq_len=16; this run has 32 — resume "
                      "with model.seq_len=16 or start a new train.run_dir"]
    assert (run_dir / "metrics.jsonl").read_text() == before
