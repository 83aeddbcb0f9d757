"""`megarank-rank compare` over the steps of one run (the reference run's checkpoints at 4 and 8, found with
--all-steps): one row per checkpoint and product holding that checkpoint's own means, the step on the x axis;
and how the x axis is chosen. (A sweep over wd_attn on real runs: test_megarank_ckpt_layouts.py.)"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import save_file

from megarank.analysis.cli import main
from megarank.analysis.compare import choose_x
from megarank.analysis.readers import open_source
from megarank.analysis.report import analyse
from megarank.analysis.spectra import DEFAULT_ATOL, DEFAULT_RTOL, METRICS
from megarank.errors import MegarankError
from tests.analysis.test_megarank_ckpt import run_cli_error


def table_of(path, **kw):
    with open_source(path, **kw) as source:
        return analyse(source, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, progress=False)


def test_compare_the_steps_of_one_run(reference_run, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", str(reference_run), "--all-steps", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "compare.json").read_text())["x"] == "step"
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["label"], r["product"]) for r in rows] == [("run@4", "qk"), ("run@4", "ov"), ("run@8", "qk"),
                                                          ("run@8", "ov")]
    for step in (4, 8):
        table = table_of(reference_run / "checkpoints" / f"global_step{step}")
        for product in ("qk", "ov"):
            row = next(r for r in rows if r["step"] == str(step) and r["product"] == product)
            assert row["wd_attn"] == "0.1"
            for name in METRICS:
                assert float(row[name]) == pytest.approx(table.metrics[product][name].mean(), rel=1e-12)
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_how_the_x_axis_is_chosen(reference_run, tmp_path):
    g = torch.Generator().manual_seed(0)
    save_file({f"layers.0.self_attn.{r}_proj.weight": torch.randn(16, 16, generator=g) for r in "qkvo"},
              str(tmp_path / "model.safetensors"))
    step4, step8 = (table_of(reference_run / "checkpoints" / f"global_step{s}") for s in (4, 8))
    external = table_of(tmp_path, n_heads=2)
    assert choose_x([step4, step8], "auto") == "step"
    assert choose_x([step4, step8], "wd_attn") == "wd_attn"
    assert choose_x([step8, external], "auto") == "index"  # the safetensors model records no step or λ
    with pytest.raises(MegarankError, match="records no step"):
        choose_x([step8, external], "step")



def test_compare_needs_two_checkpoints(reference_run, tmp_path, capsys):
    line = run_cli_error(capsys, "compare", reference_run, "--out", tmp_path / "one")
    assert line == "error: compare needs at least two checkpoints" and not (tmp_path / "one").exists()
