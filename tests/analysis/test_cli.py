"""`megarank-rank` as a user runs it: the console script in a real process (exit code 2, one `error:` line, no
traceback), options rejected before any work, and the progress bar over layers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from megarank.analysis.cli import main
from tests.analysis.test_megarank_ckpt import run_cli_error
from tests.helpers import REPO


def test_console_script_exits_2_with_one_line(tmp_path):
    megarank_rank = Path(sys.executable).parent / "megarank-rank"  # what `make analyze` runs
    proc = subprocess.run([str(megarank_rank), str(tmp_path / "nope"), "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: '{tmp_path / 'nope'}' does not exist\n"
    assert not (tmp_path / "out").exists()


def test_bad_options_fail_before_any_work(reference_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert "--rtol must be in (0, 1)" in run_cli_error(capsys, reference_run, "--rtol", "0", "--out", out)
    assert "--atol must be >= 0" in run_cli_error(capsys, reference_run, "--atol", "-1", "--out", out)
    assert "the model has layers 0..1" in run_cli_error(capsys, reference_run, "--plot-layers", "0,2", "--out", out)
    assert "comma-separated layer numbers" in run_cli_error(capsys, reference_run, "--plot-layers", "x", "--out",
                                                            out)
    out.write_text("a file")
    assert "exists and is not a directory" in run_cli_error(capsys, reference_run, "--out", out)


def test_progress_over_layers_and_chosen_plot_layers(reference_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(reference_run), "--out", str(out), "--plot-layers", "1"]) == 0
    captured = capsys.readouterr()
    assert "2/2" in captured.err and "layer" in captured.err  # tqdm over the 2 layers
    assert "2 layers x 4 heads of d_head 8" in captured.out and f"to {out}" in captured.out
    assert (out / "rank_per_head.png").is_file()
