"""Per-product decay and a decay schedule in a real run at TP=2 under ZeRO-3 (the `tp2-zero3` run's layout,
4 steps, optim.wd_qk 0.3, optim.wd_ov 0, a cosine schedule on qk alone): against optim/decay.py's formula, the
logged wd/qk, wd/ov, wd/mlp of every step; the start-up table and the markers show the split groups; the
weight norms come per product; megarank-rank and compare label the checkpoint with the decay in effect; a resume
that would merge the groups back is refused in one line naming train.init_from."""

from __future__ import annotations

import pytest

from megarank.analysis.compare import compare_rows
from megarank.ckpt.marker import Marker
from megarank.config import load_config
from megarank.errors import MegarankError
from megarank.optim.decay import decay_at
from megarank.train.resume_checks import check_resume
from tests.analysis.test_compare import table_of
from tests.helpers import read_metrics

SPLIT = ("train.max_steps=4", "checkpoint.every=4", "optim.wd_qk=0.3", "optim.wd_ov=0", "optim.wd_schedule=cosine",
         "optim.wd_schedule_start=1", "optim.wd_schedule_end=3", "optim.wd_final_ratio=0.5", "optim.wd_schedule_groups=[qk]")


@pytest.fixture(scope="module")
def split_run(launched, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("split") / "run"
    output = launched.relaunch("tp2-zero3", run_dir, *SPLIT)
    return run_dir, output


def test_each_step_logs_the_scheduled_decay_of_each_group(split_run):
    run_dir, output = split_run
    cfg = load_config(run_dir / "config.yaml")
    training = [r for r in read_metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in training] == [1, 2, 3, 4]
    for record in training:
        for group in ("qk", "ov", "mlp", "other"):
            assert record[f"wd/{group}"] == decay_at(group, record["step"] - 1, cfg.optim, 4), (record, group)
        assert "wd/attn" not in record
    assert [r["wd/qk"] for r in training][0] == 0.3 and training[-1]["wd/qk"] == pytest.approx(0.15)
    assert {r["wd/ov"] for r in training} == {0.0} and {r["wd/mlp"] for r in training} == {0.05}
    assert any(line.startswith("qk ") and line.endswith("cosine to x0.5 over steps 1-3")
               for line in output.splitlines())
    norms = next(r for r in read_metrics(run_dir) if "weight_norm/qk" in r)
    assert norms["weight_norm/ov"] > 0 and "weight_norm/attn" not in norms


def test_markers_and_the_rank_tools_hold_the_decay_in_effect(split_run):
    run_dir, _ = split_run
    tag = run_dir / "checkpoints" / "global_step4"
    marker = Marker.read(tag)
    assert marker.group_layout == ("no_decay", "qk", "ov", "mlp", "other")
    last = [r for r in read_metrics(run_dir) if "loss" in r][-1]
    assert marker.decay == {"wd_attn": None, "wd_qk": last["wd/qk"], "wd_ov": 0.0, "wd_mlp": 0.05,
                            "wd_other": 0.01, "decoupled": True}
    rows = compare_rows([table_of(tag)])
    assert {(r["wd_qk"], r["wd_ov"], r["wd_attn"]) for r in rows} == {(last["wd/qk"], 0.0, None)}


def test_a_resume_merging_the_groups_is_refused(split_run):
    run_dir, _ = split_run
    tag, config = run_dir / "checkpoints" / "global_step4", run_dir / "config.yaml"
    identity = Marker.read(tag).data
    check_resume(tag, load_config(config, ["optim.wd_ov=0.1"]), identity)  # still split: the new decay applies
    with pytest.raises(MegarankError, match=r"saved its optimizer with separate qk and ov groups; this run has one "
                                            r"attn group .* train.init_from="):
        check_resume(tag, load_config(config, ["optim.wd_qk=0", "optim.wd_schedule=constant"]), identity)
