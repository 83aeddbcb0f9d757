"""The files of one analysis (ranks.csv, singular_values.npz, summary.json, PNGs) for the reference run, against
the RankTable they are written from and the public column contract; and that a failure while writing never
leaves a result that looks complete (nor, for megarank/files.py's write-then-rename these files go through,
half a file)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from megarank import __version__
from megarank.analysis import plots
from megarank.analysis.cli import main
from megarank.analysis.readers import open_source
from megarank.analysis.report import analyse, write_report
from megarank.analysis.spectra import DEFAULT_ATOL, DEFAULT_RTOL, METRICS
from megarank.files import atomic_write

CONTRACT = ["layer", "head", "product", "rank", "rank_atol", "effective_rank", "stable_rank", "sv_max", "nuclear",
            "l2_half", "balance", "imbalance"]


@pytest.fixture(scope="module")
def table(reference_run):
    with open_source(reference_run) as source:
        return analyse(source, rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL, progress=False)


def test_files_follow_the_contract(reference_run, table, tmp_path):
    out = tmp_path / "rank"
    assert main([str(reference_run), "--out", str(out), "--no-progress"]) == 0
    with open(out / "ranks.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == CONTRACT
    assert [(int(r["layer"]), int(r["head"]), r["product"]) for r in rows] == [
        (layer, head, product) for layer in range(2) for head in range(4) for product in ("qk", "ov")]
    for r in rows:
        layer, head, product = int(r["layer"]), int(r["head"]), r["product"]
        assert int(r["rank"]) == table.metrics[product]["rank"][layer, head] <= 8
        for name in METRICS:
            assert float(r[name]) == pytest.approx(table.metrics[product][name][layer, head], rel=1e-12)
    with np.load(out / "singular_values.npz") as npz:
        assert sorted(npz.files) == ["ov", "qk"]
        for product in ("qk", "ov"):
            assert npz[product].shape == (2, 4, 8)
            np.testing.assert_array_equal(npz[product], table.sv[product])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == str(reference_run / "checkpoints" / "global_step8")
    assert summary["version"] == __version__ and summary["format"] == "megarank"
    assert summary["model"] == {"family": "gpt", "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "d_model": 32,
                                "d_head": 8}
    assert summary["settings"]["rtol"] == DEFAULT_RTOL and summary["settings"]["qr"] == "cholesky"
    for product in ("qk", "ov"):
        per_layer = [np.mean([float(r["effective_rank"]) for r in rows if int(r["layer"]) == layer
                              and r["product"] == product]) for layer in range(2)]
        assert summary["layer_means"][product]["effective_rank"] == pytest.approx(per_layer, rel=1e-12)
    assert summary["files"] == ["singular_values.npz", "ranks.csv", "rank_per_head.png", "rank_heatmap.png",
                                "balance.png", "spectra.png"]
    for name in summary["files"][2:]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([*summary["files"], "summary.json"])  # no temp files


def test_a_failure_while_writing_leaves_no_complete_looking_result(table, tmp_path, monkeypatch):
    out = tmp_path / "rank"
    write_report(table, out)  # an earlier, complete result in the same directory

    def broken(*args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(plots, "report_figures", broken)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_report(table, out)
    assert not (out / "summary.json").exists()  # so the directory does not claim a finished result
    with open(out / "ranks.csv", newline="") as f:  # what is there is whole, never half a file
        assert len(list(csv.DictReader(f))) == 16
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ranks.csv"
    path.write_text("old, complete\n")

    def write(f):
        f.write("half a ro")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, write)
    assert path.read_text() == "old, complete\n" and list(tmp_path.iterdir()) == [path]
