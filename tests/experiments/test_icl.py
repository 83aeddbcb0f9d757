"""The icl experiment (Fig 2), at a size that runs in seconds.

What is compared against what:
- the real entry point (megarank.experiments.cli.main) on the tiny config: the files it promises (summary.json
  with the common keys and the row keys the README documents, report.md embedding every PNG) against the files
  on disk;
- the recorded per-head rank, imbalance and gap of the final weights against a naive reference: the d_model ×
  d_model product formed explicitly and its singular values from torch.linalg.svdvals, the Gram matrices formed
  from the factors;
- the trained model's held-out loss against the trivial predictor's, d + noise_std²;
- Adam at λ = 0 against AdamW at λ = 0, bit for bit (why the sweep trains λ = 0 once);
- the same config run twice against itself: identical numbers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tqdm import tqdm

from megarank.analysis.report import json_ready
from megarank.errors import MegarankError
from megarank.experiments.cli import main
from megarank.experiments.icl.config import Config
from megarank.experiments.icl.tables import ROW_COLUMNS, summary_rows
from megarank.experiments.icl.train import sweep, train_one

TINY = ["d=4", "n_context=8", "d_model=8", "n_heads=2", "steps=60", "batch_size=32", "eval_batch_size=128",
        "record_every=20", "lambdas=[0,0.3]"]


def tiny_config(**overrides) -> Config:
    values = dict(d=4, n_context=8, d_model=8, n_heads=2, steps=60, batch_size=32, eval_batch_size=128,
                  record_every=20, lambdas=[0.0, 0.3])
    return Config(**{**values, **overrides})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("icl") / "out"
    assert main(["icl", *TINY, f"out_dir={out}", "--no-progress"]) == 0
    return out


def test_entry_point_writes_summary_and_report(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["experiment"] == "icl"
    assert summary["verdict"] in ("reproduced", "partly", "not")
    common = {"checks", "config", "seconds", "files"}
    assert common | {"trivial_loss", "one_step_gd_loss", "d_head", "rows"} <= set(summary)
    assert summary["config"]["lambdas"] == [0.0, 0.3]
    # λ = 0 once per optimiser (shared), λ = 0.3 per optimiser
    assert sorted((r["optimizer"], r["lambda"]) for r in summary["rows"]) == [
        ("adam_l2", 0.0), ("adam_l2", 0.3), ("adamw", 0.0), ("adamw", 0.3)]
    for row in summary["rows"]:
        assert set(row) == set(ROW_COLUMNS)
    report = (tiny_run / "report.md").read_text()
    pngs = [f for f in summary["files"] if f.endswith(".png")]
    assert len(pngs) == 4
    for name in pngs:
        assert f"]({name})" in report and (tiny_run / name).stat().st_size > 0
    for name in ("runs.csv", "balance.csv", "curves.csv", "heads.csv"):
        assert (tiny_run / name).is_file()


def test_same_seed_twice_gives_the_same_numbers(tiny_run):
    """The tiny config's sweep again, in this process: every number of every row equal to the entry point's."""
    first = json.loads((tiny_run / "summary.json").read_text())["rows"]
    cfg = tiny_config()
    second = json.loads(json.dumps(json_ready(summary_rows(cfg, sweep(cfg, progress=False)))))
    assert first == second


def test_lambdas_without_zero_is_a_one_line_error(tmp_path, capsys):
    assert main(["icl", *TINY[:-1], "lambdas=[0.1]", f"out_dir={tmp_path}", "--no-progress"]) == 2
    assert "lambdas must include 0" in capsys.readouterr().err
    with pytest.raises(MegarankError, match="d_model must be >= d \\+ 1"):
        tiny_config(d_model=4)


def test_recorded_metrics_equal_a_naive_svd_of_the_formed_products():
    """The last record of a decayed run against the formed products' svdvals and the formed Gram matrices."""
    cfg = tiny_config(steps=40, lambdas=[0.0, 1.0])
    run, model = train_one(cfg, "adam_l2", 1.0, 0, tqdm(disable=True))
    recorded = run.heads[-1]
    dh = cfg.d_head
    for layer, block in enumerate(model.blocks):
        w = {r: getattr(block.attn, f"{r}_proj").weight.detach().double() for r in "qkvo"}
        for h in range(cfg.n_heads):
            rows = slice(h * dh, (h + 1) * dh)
            factors = {"qk": (w["q"][rows].T, w["k"][rows].T), "ov": (w["o"][:, rows], w["v"][rows].T)}
            for product, (a, b) in factors.items():
                sv = torch.linalg.svdvals(a @ b.T)  # (d_model,) of the formed product
                m = {k: v[layer, h] for k, v in recorded[product].items()}
                assert m["rank"] == int((sv > cfg.rtol * sv[0]).sum())
                assert m["rank_atol"] == int((sv > cfg.atol).sum())
                assert m["nuclear"] == pytest.approx(float(sv.sum()), rel=1e-9)
                assert m["l2_half"] == pytest.approx(float((a.square().sum() + b.square().sum()) / 2), rel=1e-12)
                gram_a, gram_b = a.T @ a, b.T @ b
                assert m["imbalance"] == pytest.approx(float(torch.linalg.matrix_norm(gram_a - gram_b)), rel=1e-9)
                assert m["gram_norm"] == pytest.approx(
                    float(torch.linalg.matrix_norm(gram_a) + torch.linalg.matrix_norm(gram_b)), rel=1e-12)
                p = sv[sv > 0] / sv.sum()
                assert m["effective_rank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)
    # the reported scalars are these per-head numbers pooled as documented
    ov = recorded["ov"]
    final = run.final("ov")
    assert final["imbalance_rel"] == pytest.approx(ov["imbalance"].sum() / ov["gram_norm"].sum())
    assert final["gap"] == pytest.approx(float(np.mean(ov["l2_half"] - ov["nuclear"])))
    assert final["rank_mean"] == pytest.approx(float(ov["rank"].mean()))


def test_the_model_learns_below_the_trivial_predictor():
    """Held-out loss after 300 steps at λ = 0 against E[y²] = d (predicting 0) and its own loss at init."""
    cfg = tiny_config(n_context=16, steps=300, batch_size=64, eval_batch_size=512)
    run, _ = train_one(cfg, "adam_l2", 0.0, 0, tqdm(disable=True))
    assert run.loss[0] > 0.8 * cfg.trivial_loss  # small init: predicts ~0
    assert run.loss[-1] < 0.5 * cfg.trivial_loss


def test_adam_and_adamw_coincide_at_zero_decay():
    """Adam(weight_decay=0) against AdamW(weight_decay=0): the same weights bit for bit after 20 steps."""
    cfg = tiny_config(steps=20)
    _, adam = train_one(cfg, "adam_l2", 0.0, 3, tqdm(disable=True))
    _, adamw = train_one(cfg, "adamw", 0.0, 3, tqdm(disable=True))
    for (name, p), (_, q) in zip(adam.named_parameters(), adamw.named_parameters()):
        assert torch.equal(p, q), name
