"""The megarank reader on checkpoints written by real 2-process runs (DeepSpeed launcher, CPU, gloo), against
single-process references:

- ZeRO-3 over 2 data-parallel ranks (the parameters are partitioned; the model-states files hold empty
  placeholders): module and fp32 weights give the numbers of the 1-process ZeRO-1 `reference_run` at the same
  step (same seed, data and schedule, so the weights agree to ~1e-7).
- ZeRO-2 at TP=2 (each mp_rank file holds half the heads): the numbers of the same weights gathered into whole
  matrices and analysed by naive SVD; the fp32 master copy (DeepSpeed's zero_to_fp32, one TP rank at a time)
  equals the module weights; and `compare` of this run (wd_attn=0) with the reference (wd_attn=0.1) puts
  wd_attn on the x axis.
- ZeRO-0 (1 process, no optimizer partitions): the numbers of the reference at the same step; it holds no
  separate master copy, so --weights fp32 is refused.
- ZeRO-3 at TP=2 × DP=2 (4 processes: each TP rank's heads partitioned over 2 data-parallel ranks): the
  numbers of the ZeRO-2 TP=2 run, which saw the same data in the same order.
- The ranks each of these runs logged while training (analysis.every: ZeRO-3 gathers each layer, TP ranks
  average their heads) equal the offline analysis of its final checkpoint.

The ZeRO-3 and ZeRO-0 runs are the session's shared `dp2-zero3` and `zero0` (tests/runs.py).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from megarank.analysis.cli import main
from megarank.analysis.compare import COMPARE_COLUMNS
from tests.analysis.test_megarank_ckpt import run_cli_error, table_of, tag
from tests.analysis.test_spectra import naive_head_products, naive_sv
from megarank.analysis.spectra import PRODUCTS
from tests.helpers import read_metrics, run_training


def launched_run(tmp_path_factory, corpus, name: str, *overrides: str, nproc: int):
    run_dir = tmp_path_factory.mktemp(name) / "run"
    run_training(run_dir, corpus, "checkpoint.every=0", *overrides, nproc=nproc)
    return run_dir


@pytest.fixture(scope="module")
def zero3_run(launched):
    return launched("dp2-zero3")


@pytest.fixture(scope="module")
def tp2_run(tiny_corpus, tmp_path_factory):
    return launched_run(tmp_path_factory, tiny_corpus, "tp2", "train.max_steps=4", "zero.stage=2", "parallel.tp=2",
                        "optim.wd_attn=0", "analysis.every=2", nproc=2)


@pytest.fixture(scope="module")
def tp2_zero3_run(tiny_corpus, tmp_path_factory):
    return launched_run(tmp_path_factory, tiny_corpus, "tp2_zero3", "train.max_steps=4", "zero.stage=3",
                        "parallel.tp=2", "optim.wd_attn=0", "analysis.every=2", nproc=4)


@pytest.mark.parametrize("weights", ["module", "fp32"])
def test_zero3_matches_the_single_process_reference(weights, zero3_run, reference_run):
    table, reference = table_of(zero3_run, weights=weights), table_of(reference_run)
    assert table.info.details["zero_stage"] == 3 and table.info.details["dp"] == 2
    for product in ("qk", "ov"):
        np.testing.assert_allclose(table.sv[product], reference.sv[product], rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(table.metrics[product]["rank"], reference.metrics[product]["rank"])
        np.testing.assert_allclose(table.metrics[product]["balance"], reference.metrics[product]["balance"],
                                   rtol=1e-5)


def test_zero3_module_weights_are_the_master_copy_in_its_dtype(zero3_run):
    module, master = table_of(zero3_run), table_of(zero3_run, weights="fp32")
    for product in ("qk", "ov"):
        np.testing.assert_array_equal(module.sv[product], master.sv[product])  # fp32 training: same tensors


def gathered_spectra(tag_dir, n_heads: int = 4, d_head: int = 8) -> dict[str, np.ndarray]:
    """Naive SVD of every product from the TP shards concatenated back into whole matrices."""
    shards = [torch.load(tag_dir / f"mp_rank_{t:02d}_model_states.pt", weights_only=True)["module"] for t in (0, 1)]
    out = {"qk": [], "ov": []}
    for layer in range(2):
        def whole(role: str, dim: int) -> torch.Tensor:
            return torch.cat([s[f"blocks.{layer}.attn.{role}_proj.weight"] for s in shards], dim=dim)

        q, k, v, o = whole("q", 0), whole("k", 0), whole("v", 0), whole("o", 1)
        assert q.shape == (32, 32) and o.shape == (32, 32)
        heads = list(naive_head_products(q, k, v, o, d_head, n_kv=n_heads))
        out["qk"].append([naive_sv(qk, d_head).numpy() for _, qk, _ in heads])
        out["ov"].append([naive_sv(ov, d_head).numpy() for _, _, ov in heads])
    return {p: np.array(v) for p, v in out.items()}


def test_tp2_shards_match_the_gathered_weights(tp2_run):
    table = table_of(tp2_run)
    assert table.info.details["tp"] == 2 and table.info.details["zero_stage"] == 2
    direct = gathered_spectra(tag(tp2_run, 4))
    for product in ("qk", "ov"):
        np.testing.assert_allclose(table.sv[product], direct[product], rtol=1e-10, atol=1e-15)


def test_tp2_fp32_master_weights_equal_module_weights(tp2_run):
    module, master = table_of(tp2_run), table_of(tp2_run, weights="fp32")
    for product in ("qk", "ov"):
        np.testing.assert_array_equal(master.sv[product], module.sv[product])


def test_compare_across_wd_attn(tp2_run, reference_run, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(tp2_run), str(tag(reference_run, 4)), "--out", str(out), "--no-progress"]) == 0
    document = json.loads((out / "compare.json").read_text())
    assert document["x"] == "wd_attn" and (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    lines = (out / "compare.csv").read_text().splitlines()
    assert lines[0].split(",") == list(COMPARE_COLUMNS) and len(lines) == 1 + 2 * 2
    by_source = {}
    for row in document["rows"]:
        by_source.setdefault(row["source"], {})[row["product"]] = row
    for run, wd in ((tp2_run, 0.0), (reference_run, 0.1)):
        table = table_of(run if run is tp2_run else tag(reference_run, 4))
        rows = by_source[table.info.source]
        assert rows["qk"]["wd_attn"] == wd and rows["qk"]["step"] == 4
        for product in ("qk", "ov"):
            assert rows[product]["rank"] == pytest.approx(table.metrics[product]["rank"].mean())
            assert rows[product]["balance"] == pytest.approx(table.metrics[product]["balance"].mean())


def test_zero3_missing_or_truncated_partition(zero3_run, tmp_path, capsys):
    broken = tmp_path / "checkpoints" / "global_step8"
    shutil.copytree(tag(zero3_run), broken)
    partition = broken / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    partition.write_bytes(partition.read_bytes()[:1000])
    line = run_cli_error(capsys, broken, "--out", tmp_path / "out")
    assert f"'{broken}'" in line and "truncated or corrupt" in line
    partition.unlink()
    line = run_cli_error(capsys, broken, "--out", tmp_path / "out")
    assert f"'{partition}' is missing" in line
    assert not (tmp_path / "out").exists()


def test_zero0_matches_the_reference_and_has_no_master_copy(reference_run, launched, tmp_path, capsys):
    run_dir = launched("zero0")
    table, reference = table_of(run_dir), table_of(reference_run)  # same schedule: the same 8 steps
    assert table.info.details["zero_stage"] == 0 and table.info.details["step"] == 8
    for product in PRODUCTS:
        np.testing.assert_allclose(table.sv[product], reference.sv[product], rtol=1e-5, atol=1e-9)
    line = run_cli_error(capsys, run_dir, "--out", tmp_path / "out", "--weights", "fp32")
    assert "ZeRO-0" in line and "--weights module" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weights", ["module", "fp32"])
def test_zero3_tp2_matches_the_zero2_tp2_run(weights, tp2_zero3_run, tp2_run):
    table, reference = table_of(tp2_zero3_run, weights=weights), table_of(tp2_run)
    details = table.info.details
    assert (details["zero_stage"], details["tp"], details["dp"], details["step"]) == (3, 2, 2, 4)
    for product in PRODUCTS:
        np.testing.assert_allclose(table.sv[product], reference.sv[product], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("run, logged_steps", [("zero3_run", [4, 8]), ("tp2_run", [2, 4]),
                                               ("tp2_zero3_run", [2, 4])])
def test_ranks_logged_while_training_match_the_offline_analysis(run, logged_steps, request):
    run_dir = request.getfixturevalue(run)
    logged = [record for record in read_metrics(run_dir) if "rank/qk_mean" in record]
    assert [record["step"] for record in logged] == logged_steps
    table = table_of(run_dir)
    layer_means, means = table.layer_means(), table.means()
    for product in PRODUCTS:
        for layer in range(table.info.n_layers):
            assert logged[-1][f"rank/{product}_mean/layer{layer}"] == pytest.approx(layer_means[product]["rank"][layer])
        for name in ("rank", "effective_rank", "balance"):
            assert logged[-1][f"{name}/{product}_mean"] == pytest.approx(means[product][name], rel=1e-6)
