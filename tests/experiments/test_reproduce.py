"""`make reproduce` (megarank-exp reproduce) when one experiment fails: the failing one against a row of REPORT.md
saying `failed` with its one-line error, every other experiment against a finished result and its verdict row
(the registry's beyond_paper entries in the "Beyond the paper" table),
and the exit status against the CLI contract (1 when any failed, REPORT.md written anyway).

factorized runs for real (seconds); scalar raises a RuntimeError (not a user error: the case that used to end
the whole run); the slower experiments are stood in for by a finished result written with the real writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from megarank.experiments import reproduce as reproduce_module
from megarank.experiments.cli import main
from megarank.experiments.registry import EXPERIMENTS, NAMES
from megarank.experiments.report import Check, Result, write_result
from megarank.experiments.runner import run_experiment
from tests.helpers import REPO


@pytest.fixture
def one_failing(tmp_path, monkeypatch) -> list[str]:
    """reproduce() in tmp_path with scalar raising; returns the names it was asked to run, in order."""
    monkeypatch.chdir(tmp_path)
    called = []

    def fake_run_experiment(name: str, *, force: bool, progress: bool) -> Path:
        called.append(name)
        out = tmp_path / "runs" / "paper" / name
        if name == "scalar":
            raise RuntimeError("unexpected pos 6656 vs 6550\nsecond line of the message")
        if name == "factorized":
            return run_experiment(name, str(REPO / "configs/experiments/paper/factorized.yaml"),
                                  [f"out_dir={out}"], force=force, progress=progress)
        result = Result(experiment=name, title=f"{name} stand-in", checks=[Check("stand-in", True, "1 = 1")],
                        summary={})
        write_result(result, out, {"stand_in": True}, 0.5)
        return out

    monkeypatch.setattr(reproduce_module, "run_experiment", fake_run_experiment)
    return called


def test_one_failure_is_reported_and_the_rest_still_run(one_failing, tmp_path):
    assert main(["reproduce", "--no-progress"]) == 1
    assert one_failing == list(NAMES)  # every experiment was tried, in the registry's order
    report = (tmp_path / "runs" / "paper" / "REPORT.md").read_text()
    tables = report.split('<a id="', 1)[0]  # the verdict tables, before the first experiment's report
    rows = {line.split(" | ")[0].strip("| []").split("](")[0]: line for line in tables.splitlines()
            if line.startswith("| ") and not line.startswith("| experiment |")}
    assert set(rows) == set(NAMES)
    _, beyond_part = tables.split("## Beyond the paper", 1)  # the registry's beyond_paper entries after it
    for entry in EXPERIMENTS:
        assert (rows[entry.name] in beyond_part) == entry.beyond_paper and rows[entry.name] in report
    assert rows["scalar"] == "| scalar | Fig 5 | failed | RuntimeError: unexpected pos 6656 vs 6550 | |"
    assert "second line" not in report
    for name in NAMES:
        if name != "scalar":  # a verdict from the result's summary.json
            assert " | **" in rows[name] and (tmp_path / "runs" / "paper" / name / "summary.json").is_file()
    assert "(factorized/fig1.png)" in report  # the finished reports follow, figures linked below runs/paper


def test_reproduce_refuses_overrides(capsys):
    """reproduce runs the defaults: an override or --config is a one-line error, not silently ignored."""
    assert main(["reproduce", "steps=10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: reproduce runs every experiment's default config") and err.count("\n") == 1
