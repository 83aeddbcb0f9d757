"""A weight decay changed on resume applies from the resume step (issue 20's done-when): 4 steps at wd_attn 0.1,
then a resume with optim.wd_attn=0 and 4 more steps, equals bit for bit a straight run whose decay schedule
switches attention's decay off at step 4 (optim.wd_schedule=step) — in one process (the session's `reference`
run, cut back) and in two under ZeRO-3 (its `dp2-zero3` run, cut back; tests/runs.py). Compared: every step's
loss, the logged wd/<group>, the final weights (one process) or the step-8 weight norms and ranks (ZeRO-3, whose
weights lie in partitions); and the records the change leaves (a warning, a decay_changed record, the decay in
effect in the markers). The scheduled run's logged lr and wd/<group> also check optim/timescales.py's Σ lr·λ.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from megarank.ckpt.marker import Marker
from megarank.config import load_config
from megarank.optim.timescales import decay_timescales
from tests.helpers import read_metrics, train_losses

SWITCH_OFF_AT_4 = ("optim.wd_schedule=step", "optim.wd_schedule_start=4", "optim.wd_final_ratio=0",
                   "optim.wd_schedule_groups=[attn]")


def training(run_dir):
    return [r for r in read_metrics(run_dir) if "loss" in r]


def runs(launched, name, tmp_path):
    """(the scheduled straight run, the shared run cut back to step 4 and resumed with wd_attn 0, its output)."""
    scheduled, resumed = tmp_path / "scheduled", tmp_path / "resumed"
    launched.relaunch(name, scheduled, *SWITCH_OFF_AT_4)
    shutil.copytree(launched(name), resumed)
    shutil.rmtree(resumed / "checkpoints" / "global_step8")
    output = launched.relaunch(name, resumed, "optim.wd_attn=0")
    return scheduled, resumed, output


def check_same_run(scheduled, resumed, output):
    assert train_losses(resumed) == train_losses(scheduled)
    logged = [[r.get(f"wd/{g}") for g in ("attn", "mlp", "other")] for r in training(resumed)]
    assert logged == [[r.get(f"wd/{g}") for g in ("attn", "mlp", "other")] for r in training(scheduled)]
    assert [wd[0] for wd in logged] == [0.1] * 4 + [0.0] * 4 and {wd[1] for wd in logged} == {0.05}
    # the records of the change: a warning, a metrics record at the resume step, the markers' decay in effect
    assert "weight decay changed on resume, from step 4 on: attn 0.1 -> 0" in output
    changed = [r for r in read_metrics(resumed) if r.get("event") == "decay_changed"]
    assert changed == [{"step": 4, "event": "decay_changed", "wd_before/attn": 0.1, "wd_after/attn": 0.0}]
    for run in (scheduled, resumed):
        assert Marker.read(run / "checkpoints" / "global_step4").decay["wd_attn"] == 0.1
        assert Marker.read(run / "checkpoints" / "global_step8").decay["wd_attn"] == 0.0
        assert Marker.read(run / "checkpoints" / "global_step8").decay["wd_mlp"] == 0.05


def test_decay_switched_off_on_resume_equals_the_schedule_one_process(launched, tmp_path):
    scheduled, resumed, output = runs(launched, "reference", tmp_path)
    check_same_run(scheduled, resumed, output)
    straight = torch.load(scheduled / "checkpoints/global_step8/mp_rank_00_model_states.pt", weights_only=False)
    again = torch.load(resumed / "checkpoints/global_step8/mp_rank_00_model_states.pt", weights_only=False)
    for name, tensor in straight["module"].items():
        assert torch.equal(again["module"][name], tensor), name
    # the control: the shared run kept wd_attn 0.1 and ends elsewhere
    assert train_losses(launched("reference"))[8] != train_losses(scheduled)[8]

    # Σ lr·λ from the config (optim/timescales.py) against the sum over the logged steps
    cfg = load_config(scheduled / "config.yaml")
    timescales = decay_timescales(cfg.optim, cfg.train.max_steps)
    for group in ("attn", "mlp", "other"):
        logged = math.fsum(r["lr"] * r[f"wd/{group}"] for r in training(scheduled))
        assert timescales[group].total == pytest.approx(logged, rel=1e-12, abs=0), group
    assert timescales["attn"].total < timescales["mlp"].total / 0.05 * 0.1  # the switch-off halves attn's total


def test_decay_switched_off_on_resume_equals_the_schedule_two_processes_zero3(launched, tmp_path):
    scheduled, resumed, output = runs(launched, "dp2-zero3", tmp_path)
    check_same_run(scheduled, resumed, output)

    def analysis(run):  # step 8's weight norms and ranks: functions of the final weights
        return [r for r in read_metrics(run) if r["step"] == 8 and any(k.startswith("weight_norm/") for k in r)]

    assert analysis(resumed) == analysis(scheduled) != []
