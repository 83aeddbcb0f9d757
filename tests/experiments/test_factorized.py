"""`megarank-exp factorized` (Fig 1) at a tiny size through the real entry point, compared against the theory:
the imbalance ‖AᵀA − BᵀB‖ against its predicted decay rate 2·lr·λ, the final singular values of ABᵀ (and of the
proximal-gradient W) against soft-threshold(σ(D), λ/2) computed here independently, the closed form against
perturbations of it, and summary.json/report.md against the documented layout. Bad keys exit 2 with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from megarank.experiments import factorized
from megarank.experiments.cli import main
from tests.helpers import REPO

DIAG = np.array([0.2, 0.4, 0.6, 0.8, 1.0])


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # the CLI reads configs/experiments/paper/*.yaml relative to the repo


def test_closed_form_is_the_minimiser_of_the_nuclear_objective():
    """soft-threshold(σ(D), λ/2) against hand values, and its objective against 200 random perturbations."""
    target = np.diag(DIAG)
    np.testing.assert_allclose(factorized.nuclear_minimiser_sv(target, 0.6), [0.7, 0.5, 0.3, 0.1, 0.0], atol=1e-12)
    lam = 0.9
    w_star = np.diag(np.maximum(DIAG - lam / 2, 0))

    def objective(w):
        return np.sum((w - target) ** 2) + lam * np.linalg.svd(w, compute_uv=False).sum()

    rng = np.random.default_rng(0)
    best = objective(w_star)
    assert all(objective(w_star + 1e-3 * rng.normal(size=(5, 5))) > best for _ in range(200))


def test_tiny_run_matches_the_theory(tmp_path):
    """Rates against 2·lr·λ, singular values against the closed form, λ = 0 against no balancing; the files."""
    out = tmp_path / "fact"
    lambdas = [0.0, 0.5, 1.0]
    # the paper's 1000 steps (a fraction of a second): at 400 the λ = 0 run has not grown its smallest mode yet
    assert main(["factorized", f"out_dir={out}", "lambdas=[0.0,0.5,1.0]", "trace_lambda=0.5",
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "factorized" and summary["verdict"] == "reproduced"
    assert all(check["passed"] for check in summary["checks"])
    rows = summary["rows"]
    assert [row["lambda"] for row in rows] == lambdas
    lr = summary["config"]["lr"]
    for row in rows:
        assert set(row) == {"lambda", "measured_rate", "predicted_rate", "singular_values",
                            "predicted_singular_values"}
        assert isinstance(row["measured_rate"], float) and len(row["singular_values"]) == 5
        assert row["predicted_rate"] == pytest.approx(2 * lr * row["lambda"])
        closed = np.maximum(DIAG[::-1] - row["lambda"] / 2, 0)
        np.testing.assert_allclose(row["predicted_singular_values"], closed, atol=1e-12)
        if row["lambda"] > 0:
            assert row["measured_rate"] == pytest.approx(row["predicted_rate"], rel=0.15)
            np.testing.assert_allclose(row["singular_values"], closed, atol=1e-3)
        else:
            assert abs(row["measured_rate"]) < 1e-4  # no decay, no balancing
    report = (out / "report.md").read_text()
    for png in ("fig1.png", "rates.png"):
        assert f"]({png})" in report and (out / png).stat().st_size > 0
    assert "Verdict: reproduced" in report and (out / "factorized.csv").is_file()


def test_proximal_run_lands_on_the_closed_form():
    """Proximal gradient on W against soft-threshold(σ(D), λ/2), and the fitted rate against 2·lr·λ."""
    cfg = factorized.Config(lambdas=[0.4], steps=300)
    target = np.diag(DIAG)
    prox = factorized.train_direct(cfg, target, 0.4)
    np.testing.assert_allclose(prox.sv[-1], np.maximum(DIAG[::-1] - 0.2, 0), atol=1e-10)
    run = factorized.train_factors(cfg, target, 0.4)
    assert factorized.fit_rate(run.imbalance, cfg.fit_floor) == pytest.approx(2 * cfg.lr * 0.4, rel=0.05)


def test_yaml_sets_every_knob():
    """configs/experiments/paper/factorized.yaml against the Config fields: every knob is in the file."""
    keys = set(yaml.safe_load((REPO / "configs/experiments/paper/factorized.yaml").read_text()))
    assert keys == set(factorized.Config.__dataclass_fields__)


def test_bad_key_and_bad_value_exit_2_with_one_line(tmp_path, capsys):
    """A typo and a trace_lambda outside lambdas against the CLI contract: exit 2, one `error:` line."""
    assert main(["factorized", f"out_dir={tmp_path}", "lamdas=[0.1]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "lamdas" in err
    assert main(["factorized", f"out_dir={tmp_path}", "lambdas=[0.1]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trace_lambda" in err
    assert not (tmp_path / "summary.json").exists()
