"""Resuming with changed settings, against the single-process reference run (global_batch 8, checkpoints at
steps 4 and 8).

A changed train.global_batch continues from the samples consumed: through the task, the sequences of the
resumed steps equal the straight run's at the same sampler positions; in a real run the logged and saved
consumed_samples continue across the resume. Settings that cannot continue (sequence length, model shape or
function, optim.decoupled, Adam's betas and eps, the optimizer's decay-group layout, training data, tokenizer) are refused against the reference's real completion marker
(and the same marker stripped to what the landed main wrote), and through megarank-train in one line with
exit 2; the unchanged settings, model.rope_base under learned positions (unused there), and a changed weight
decay or decay schedule that keeps the group layout (applied from the resume step: tests/train/test_decay_resume.py),
pass.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from megarank.ckpt.tags import COMPLETE_MARKER
from megarank.config import load_config
from megarank.errors import MegarankError
from megarank.parallel.layout import ParallelLayout
from megarank.train.resume_checks import check_resume
from megarank.train.tasks import TextTask, build_task
from tests.helpers import TINY, read_metrics, run_cli, run_training


def task_with(config, *overrides) -> TextTask:
    cfg = load_config(config, list(overrides))
    one_process = ParallelLayout(tp_size=1, dp_size=1, tp_rank=0, dp_rank=0, tp_group=None, dp_group=None)
    return build_task(cfg, one_process, torch.device("cpu"), is_main=False)


def inputs(task: TextTask, consumed_samples: int, steps: int) -> torch.Tensor:
    """The input sequences of `steps` steps from consumed_samples on, in sampler-position order."""
    batches = task.train_batches(consumed_samples)
    micro_steps = steps * task.train_cfg.global_batch // task.train_cfg.micro_batch
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
    ("model.norm_eps=1e-6", "trained with model.norm_eps=1e-05; this run has 1e-06"),
    ("optim.wd_qk=0.2", "saved its optimizer with one attn group; this run splits it into qk and ov .* start a "
                        "new train.run_dir with train.init_from=.*global_step4"),
    # a schedule on one product only (a constant one scales nothing, so splits nothing)
    ("optim.wd_schedule=step optim.wd_schedule_groups=[ov]", "saved its optimizer with one attn group; this run splits it"),
    ("optim.decoupled=false", "trained with optim.decoupled=true; this run has false"),
    ("optim.beta2=0.99", "trained with optim.beta2=0.95; this run has 0.99"),
    ("optim.eps=1e-6", "trained with optim.eps=1e-08; this run has 1e-06"),
])
@pytest.mark.parametrize("marker", ["as written", "as the landed main wrote it"])
def test_shape_function_decay_and_seed_changes_are_refused(reference_run, tmp_path, override, expected, marker):
    config, tag = reference_run / "config.yaml", reference_run / "checkpoints" / "global_step4"
    if marker != "as written":  # no tensor records: the config alone decides, as for every older marker
        tag = copy_marker(tag, tmp_path / "global_step4", drop=("tensors", "decay_groups", "decay"))
    identity = task_with(config).data.identity
    check_resume(tag, load_config(config), identity)  # the saved settings themselves pass
    check_resume(tag, load_config(config, ["model.rope_base=500"]), identity)  # learned positions: unused
    with pytest.raises(MegarankError, match=expected):
        check_resume(tag, load_config(config, override.split()), identity)


@pytest.mark.parametrize("override", ["optim.wd_attn=0.2", "optim.wd_mlp=0", "optim.wd_other=0.1",
                                      "optim.wd_qk=0.3 optim.wd_ov=0.3", "optim.wd_schedule=cosine"])
def test_decay_changes_that_keep_the_groups_pass(reference_run, override):
    """A new decay applies from the resume step (the loop sets it every step); only the group layout is fixed."""
    config, tag = reference_run / "config.yaml", reference_run / "checkpoints" / "global_step4"
    check_resume(tag, load_config(config, override.split()), task_with(config).data.identity)


def test_a_split_checkpoint_refuses_one_attn_group(reference_run, tmp_path):
    """The layout recorded in the marker (decay_groups) decides: a qk/ov checkpoint needs wd_qk != wd_ov."""
    config, source = reference_run / "config.yaml", reference_run / "checkpoints" / "global_step4"
    tag = copy_marker(source, tmp_path / "global_step4")
    marker = json.loads((tag / COMPLETE_MARKER).read_text())
    assert marker["decay_groups"] == ["no_decay", "attn", "mlp", "other"]
    marker["decay_groups"] = ["no_decay", "qk", "ov", "mlp", "other"]
    (tag / COMPLETE_MARKER).write_text(json.dumps(marker))
    identity = task_with(config).data.identity
    check_resume(tag, load_config(config, ["optim.wd_qk=0.3"]), identity)
    with pytest.raises(MegarankError, match="saved its optimizer with separate qk and ov groups; this run has one"):
        check_resume(tag, load_config(config), identity)


def copy_marker(source_tag, tag, *, drop=(), config_edit=("", "")):
    """A tag holding only source_tag's marker, without the fields `drop`, its config text edited."""
    marker = json.loads((source_tag / COMPLETE_MARKER).read_text())
    for key in drop:
        del marker[key]
    marker["config"] = marker["config"].replace(*config_edit)
    tag.mkdir(parents=True)
    (tag / COMPLETE_MARKER).write_text(json.dumps(marker))
    return tag


def test_rope_base_change_is_refused_under_rotary_positions(reference_run, tmp_path):
    config = reference_run / "config.yaml"
    tag = copy_marker(reference_run / "checkpoints" / "global_step4", tmp_path / "global_step4",
                      config_edit=("position: learned", "position: rotary"))
    identity = task_with(config).data.identity
    rotary = ["model.position=rotary"]
    check_resume(tag, load_config(config, rotary), identity)
    with pytest.raises(MegarankError, match="trained with model.rope_base=10000.0; this run has 500.0 — resume with "
                                            "model.rope_base=10000.0"):
        check_resume(tag, load_config(config, [*rotary, "model.rope_base=500"]), identity)


@pytest.mark.parametrize("key, named", [("tokenizer_sha256", "data made with tokenizer sha256"),
                                        ("train_sha256", "training shards with sha256")])
def test_other_data_or_tokenizer_is_refused(reference_run, key, named):
    identity = dict(task_with(reference_run / "config.yaml").data.identity)
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
