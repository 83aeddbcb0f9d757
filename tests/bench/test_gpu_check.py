"""`make gpu-check` on a machine without a GPU, and its report writer: the refusal is one line and exit 2, and
report.md is written from a report.json recorded on an H100 (tests/bench/data/) with every stage, figure and
version it holds, and the verdict the JSON records (PASSED, FAILED, or INCOMPLETE when cut short); the one "loss
fell" check of the train and train_llama stages against losses made up to pass and to fail it."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from megarank.bench.gpu_report import render_markdown, write_report
from tests.helpers import REPO, clean_env

RECORDED = json.loads((Path(__file__).parent / "data" / "gpu_check_h100_report.json").read_text())


def test_without_a_gpu_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--out", "unused"], cwd=REPO, capture_output=True,
                          text=True, env=clean_env(CUDA_VISIBLE_DEVICES=""), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA GPU" in proc.stderr, proc.stderr
    assert not (REPO / "unused").exists()


def test_an_unknown_stage_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--out", "unused", "--stages", "train,rnak"],
                          cwd=REPO, capture_output=True, text=True, env=clean_env(CUDA_VISIBLE_DEVICES=""), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown stage rnak" in proc.stderr, proc.stderr
    assert not (REPO / "unused").exists()


def test_report_from_the_recorded_h100_check(tmp_path):
    json_path, md_path = write_report(RECORDED, tmp_path)
    assert json.loads(json_path.read_text()) == RECORDED
    text = md_path.read_text()
    assert text.startswith("# make gpu-check: PASSED")
    env = RECORDED["environment"]
    for field in ("gpu", "driver", "cuda", "torch", "deepspeed", "python"):
        assert str(env[field]) in text, field
    assert "flash_attn not installed" in text  # recorded as null: the image had none
    for name, stage in RECORDED["stages"].items():
        assert f"| {name} | pass |" in text and stage["summary"] in text
    bench = RECORDED["stages"]["bench"]["results"]
    for row in bench["levers"]:
        assert f"| {row['variant']} | {row['tokens_per_s']:,.0f} |" in text
    assert f"{bench['matmul']['tflops']:.0f} TFLOP/s" in text


def test_a_failed_or_cut_short_check_says_so(tmp_path):
    failed = copy.deepcopy(RECORDED)
    failed["ok"] = False
    failed["stages"]["train"] |= {"ok": False, "summary": "RuntimeError",
                                  "error": "launcher noise\nerror: train.micro_batch must be positive\nmore noise"}
    text = render_markdown(failed)
    assert text.startswith("# make gpu-check: FAILED")
    # megarank's own error line is the one the table shows, and the whole log follows
    assert "| train | FAIL |" in text and "RuntimeError — error: train.micro_batch must be positive" in text
    assert "### train: what failed" in text
    cut = copy.deepcopy(RECORDED) | {"complete": False, "ok": False}
    assert render_markdown(cut).startswith("# make gpu-check: INCOMPLETE")
    partial = copy.deepcopy(RECORDED) | {"left_out": ["bench", "eval"]}
    partial["stages"] = {name: partial["stages"][name] for name in ("train", "rank")}
    text = render_markdown(partial)
    assert text.startswith("# make gpu-check: PASSED") and "left out: bench, eval" in text


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loss_fell_compares_the_last_ten_with_the_first_five():
    gpu_check = _gpu_check()
    falling = {step: 10.0 if step <= 5 else 6.0 for step in range(1, 21)}  # 6 < 0.7 · 10
    assert gpu_check.loss_fell(falling, "the loss") == (10.0, 6.0)
    flat = {step: 10.0 if step <= 5 else 7.5 for step in range(1, 21)}  # 7.5 > 0.7 · 10
    with pytest.raises(RuntimeError, match="the LLaMA loss did not fall: first five steps 10.000, last ten 7.500"):
        gpu_check.loss_fell(flat, "the LLaMA loss")
