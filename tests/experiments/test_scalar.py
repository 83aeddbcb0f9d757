"""`megarank-exp scalar` (Fig 5) at a tiny size through the real entry point: where Adam + L2 and AdamW end up on
w and on w = a·b, compared against the fixed points derived in megarank/experiments/scalar.py and recomputed here
by hand (ridge y/(1+λ), soft-threshold max(|y|−λ, 0), clips min(|y|, 1/λ) and min(|y|, 1/λ²), |a| = |b|), and
summary.json/report.md against the documented layout. Bad keys exit 2 with one line."""

from __future__ import annotations

import json

import pytest
import yaml

from megarank.experiments import scalar
from megarank.experiments.cli import main
from tests.helpers import REPO


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # the CLI reads configs/experiments/paper/*.yaml relative to the repo


def test_closed_forms():
    """predicted_w against hand values of each regime, both signs of y."""
    assert scalar.predicted_w("adam_l2", "direct", 1.5, 1.0) == pytest.approx(0.75)
    assert scalar.predicted_w("adam_l2", "factorized", 1.5, 1.0) == pytest.approx(0.5)
    assert scalar.predicted_w("adam_l2", "factorized", -1.5, 2.0) == 0.0
    assert scalar.predicted_w("adamw", "direct", 1.5, 0.5) == pytest.approx(1.5)  # box 2 inactive
    assert scalar.predicted_w("adamw", "direct", -1.5, 1.0) == pytest.approx(-1.0)
    assert scalar.predicted_w("adamw", "factorized", 1.5, 2.0) == pytest.approx(0.25)
    assert scalar.predicted_w("adamw", "factorized", 1.5, 0.0) == pytest.approx(1.5)


def test_tiny_run_ends_at_the_derived_fixed_points(tmp_path):
    """Every run's final w against the hand-computed closed form; factorised runs balanced for λ > 0."""
    out = tmp_path / "scalar"
    y = 1.5
    assert main(["scalar", f"out_dir={out}", "lambdas=[0.0,1.0,2.0]", "steps=1000", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "scalar" and summary["verdict"] == "reproduced" and summary["y"] == y
    expected = {("adam_l2", "direct"): lambda lam: y / (1 + lam),
                ("adam_l2", "factorized"): lambda lam: max(y - lam, 0.0),
                ("adamw", "direct"): lambda lam: min(y, 1 / lam) if lam else y,
                ("adamw", "factorized"): lambda lam: min(y, 1 / lam ** 2) if lam else y}
    rows = summary["rows"]
    assert len(rows) == 12
    for row in rows:
        assert set(row) == {"optimizer", "parametrization", "lambda", "w", "predicted_w", "a", "b", "balance"}
        closed = expected[row["optimizer"], row["parametrization"]](row["lambda"])
        assert row["predicted_w"] == pytest.approx(closed)
        assert row["w"] == pytest.approx(closed, abs=1e-3)
        if row["parametrization"] == "factorized":
            assert row["a"] * row["b"] == pytest.approx(row["w"])
            if row["lambda"] > 0:
                assert abs(row["balance"]) < 0.01
            else:
                assert abs(row["balance"]) > 0.5  # no decay: the start's imbalance of 1.0 stays
        else:
            assert row["a"] is None and row["balance"] is None
    report = (out / "report.md").read_text()
    for png in ("paths_adam_l2.png", "paths_adamw.png"):
        assert f"]({png})" in report and (out / png).stat().st_size > 0
    assert "Verdict: reproduced" in report and (out / "scalar.csv").is_file()


def test_negative_target_ends_on_the_antidiagonal():
    """Adam + L2 on a·b with y = −1.5, λ = 0.5 against the soft-threshold −1.0 with a = −b."""
    cfg = scalar.Config(y=-1.5, lambdas=[0.5], steps=1500)
    path = scalar.train(cfg, "adam_l2", "factorized", 0.5)
    assert path.w[-1] == pytest.approx(-1.0, abs=1e-3)
    assert path.a[-1] == pytest.approx(-path.b[-1], abs=1e-3)


def test_yaml_sets_every_knob():
    """configs/experiments/paper/scalar.yaml against the Config fields: every knob is in the file."""
    keys = set(yaml.safe_load((REPO / "configs/experiments/paper/scalar.yaml").read_text()))
    assert keys == set(scalar.Config.__dataclass_fields__)


def test_bad_key_and_bad_value_exit_2_with_one_line(tmp_path, capsys):
    """A typo and an out-of-range min_lr_ratio against the CLI contract: exit 2, one `error:` line."""
    assert main(["scalar", f"out_dir={tmp_path}", "stpes=10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "stpes" in err
    assert main(["scalar", f"out_dir={tmp_path}", "min_lr_ratio=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "min_lr_ratio" in err
    assert not (tmp_path / "summary.json").exists()
