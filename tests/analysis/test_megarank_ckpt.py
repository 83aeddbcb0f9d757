"""The megarank checkpoint reader against the same weights loaded directly: the trained tiny GPT's ZeRO-1
checkpoint (tests/conftest.py `reference_run`) rebuilt as a GPT from the checkpoint's own config and analysed by
naive SVD of every formed product. Also: which tag a path designates, TP=2 and TP=4 checkpoints cut from it
the way megarank's TP plan shards the weights (each rank's heads analysed where they lie must give the TP=1
numbers), the fp32 master copy, a marker from before tensor records (the roles table's styles by name: the same
numbers), and bad input (one-line error naming the file, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from megarank.analysis.cli import main
from megarank.analysis.readers import open_source
from megarank.analysis.report import analyse
from megarank.ckpt.marker import Marker
from megarank.ckpt.resolve import resolve_tag, tags_at
from megarank.ckpt.tags import COMPLETE_MARKER
from megarank.errors import MegarankError
from megarank.models.gpt import GPT
from megarank.models.roles import split_dim
from tests.analysis.test_spectra import naive_head_products, naive_sv

RTOL, ATOL = 1e-2, 1e-3


def tag(run: Path, step: int = 8) -> Path:
    return run / "checkpoints" / f"global_step{step}"


def rebuilt_gpt(tag_dir: Path) -> GPT:
    """The single-process model: a GPT built from the checkpoint's config, loaded with its module weights."""
    model = GPT(Marker.read(tag_dir).model_config())
    model.load_state_dict(torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=True)["module"])
    return model


def direct_spectra(model: GPT) -> dict[str, np.ndarray]:
    """product -> (n_layers, n_heads, d_head) singular values of every formed product."""
    d_head = model.cfg.d_head
    out = {"qk": [], "ov": []}
    for block in model.blocks:
        attn = block.attn
        q, k, v, o = (getattr(attn, f"{r}_proj").weight.detach() for r in "qkvo")
        heads = list(naive_head_products(q, k, v, o, d_head, n_kv=model.cfg.n_heads))
        out["qk"].append([naive_sv(qk, d_head).numpy() for _, qk, _ in heads])
        out["ov"].append([naive_sv(ov, d_head).numpy() for _, _, ov in heads])
    return {p: np.array(v) for p, v in out.items()}


def table_of(path: Path, **kw):
    with open_source(path, **kw) as source:
        return analyse(source, rtol=RTOL, atol=ATOL, progress=False)


def test_reader_matches_the_model_rebuilt_from_config(reference_run):
    table = table_of(reference_run)
    direct = direct_spectra(rebuilt_gpt(tag(reference_run)))
    assert table.info.n_layers == 2 and table.info.n_heads == 4 and table.info.d_head == 8
    assert table.info.details["step"] == 8 and table.info.details["zero_stage"] == 1
    for product in ("qk", "ov"):
        np.testing.assert_allclose(table.sv[product], direct[product], rtol=1e-10, atol=1e-15)
        sv = direct[product]
        np.testing.assert_array_equal(table.metrics[product]["rank"], (sv > RTOL * sv[..., :1]).sum(-1))
        np.testing.assert_allclose(table.metrics[product]["nuclear"], sv.sum(-1), rtol=1e-10)


def test_paths_resolve_to_the_tag_they_designate(reference_run, tmp_path):
    newest = tag(reference_run)
    for path in (reference_run, reference_run / "checkpoints", newest):
        assert resolve_tag(path) == newest
    assert resolve_tag(tag(reference_run, 4)) == tag(reference_run, 4)
    assert tags_at(reference_run) == [tag(reference_run, 4), newest]
    # without `latest`, the newest complete tag; a newer one cut short is skipped
    ckpt = tmp_path / "checkpoints"
    shutil.copytree(reference_run / "checkpoints", ckpt)
    (ckpt / "latest").unlink()
    (ckpt / "global_step12").mkdir()
    assert resolve_tag(ckpt) == ckpt / "global_step8"
    with pytest.raises(MegarankError, match="global_step12' is an incomplete checkpoint"):
        resolve_tag(ckpt / "global_step12")


def cut_into_tp_shards(source_tag: Path, out: Path, tp: int, *, old_marker: bool = False) -> Path:
    """A copy of a TP=1 tag with its module re-cut into tp mp_rank files the way megarank's TP writes them:
    q/k/v and fc_in split by rows, o and fc_out by columns, the vocabulary split (the TP styles the marker
    records, from the roles table). old_marker: its marker without tensor records, as the landed main wrote."""
    out.mkdir(parents=True)
    module = torch.load(source_tag / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    records = Marker.read(source_tag).tensors
    for t in range(tp):
        local = {}
        for name, tensor in module.items():
            dim = split_dim(records[name].tp_style) if name in records else None  # a tied lm_head: wte's
            local[name] = tensor if dim is None else tensor.chunk(tp, dim)[t].clone()
        torch.save({"module": local}, out / f"mp_rank_{t:02d}_model_states.pt")
    marker = json.loads((source_tag / COMPLETE_MARKER).read_text())
    marker["layout"] = {"tp": tp, "dp": 1, "world_size": tp}
    if old_marker:
        del marker["tensors"]
    (out / COMPLETE_MARKER).write_text(json.dumps(marker))
    return out


@pytest.mark.parametrize("tp, old_marker", [(2, False), (4, False), (2, True)])
def test_tp_shards_give_the_tp1_numbers(tp, old_marker, reference_run, tmp_path):
    sharded = cut_into_tp_shards(tag(reference_run), tmp_path / "global_step8", tp, old_marker=old_marker)
    assert (Marker.read(sharded).tensors is None) == old_marker
    local = torch.load(sharded / "mp_rank_01_model_states.pt", weights_only=True)["module"]
    assert local["blocks.0.attn.q_proj.weight"].shape == (32 // tp, 32)  # each file really holds a slice
    table, reference = table_of(sharded), table_of(reference_run)
    assert table.info.details["tp"] == tp
    for product in ("qk", "ov"):
        np.testing.assert_allclose(table.sv[product], reference.sv[product], rtol=1e-12, atol=1e-16)
        for name, values in reference.metrics[product].items():
            np.testing.assert_allclose(table.metrics[product][name], values, rtol=1e-12, atol=1e-16)


def test_fp32_master_weights_equal_module_weights_in_fp32_training(reference_run):
    """train.precision=fp32: ZeRO's master copy is the module's weights, bit for bit."""
    master, module = table_of(reference_run, weights="fp32"), table_of(reference_run)
    assert master.info.details["weights"] == "fp32"
    for product in ("qk", "ov"):
        np.testing.assert_array_equal(master.sv[product], module.sv[product])


def copy_tag(reference_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "checkpoints" / "global_step8"
    shutil.copytree(tag(reference_run), out)
    return out


def run_cli_error(capsys, *argv) -> str:
    """main() on argv: exit 2, one `error:` line and nothing else on stderr; returns that line."""
    capsys.readouterr()  # drop what the test printed before
    rc = main([*map(str, argv), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_not_a_checkpoint(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    line = run_cli_error(capsys, tmp_path, "--out", tmp_path / "out")
    assert f"'{tmp_path}' is not a checkpoint" in line
    assert not (tmp_path / "out").exists()
    assert "does not exist" in run_cli_error(capsys, tmp_path / "nope", "--out", tmp_path / "out")


def test_truncated_shard(capsys, reference_run, tmp_path):
    broken = copy_tag(reference_run, tmp_path)
    shard = broken / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    line = run_cli_error(capsys, broken, "--out", tmp_path / "out")
    assert f"'{shard}' cannot be read: truncated or corrupt" in line
    assert not (tmp_path / "out").exists()


def test_missing_tp_shard(capsys, reference_run, tmp_path):
    sharded = cut_into_tp_shards(tag(reference_run), tmp_path / "global_step8", 2)
    (sharded / "mp_rank_01_model_states.pt").unlink()
    line = run_cli_error(capsys, sharded, "--out", tmp_path / "out")
    assert f"'{sharded / 'mp_rank_01_model_states.pt'}' is missing" in line


def test_missing_optimizer_partition_for_master_weights(capsys, reference_run, tmp_path):
    broken = copy_tag(reference_run, tmp_path)
    (broken / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    line = run_cli_error(capsys, broken, "--weights", "fp32", "--out", tmp_path / "out")
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt' is missing" in line


def test_unknown_tensor_names(capsys, reference_run, tmp_path):
    broken = copy_tag(reference_run, tmp_path)
    shard = broken / "mp_rank_00_model_states.pt"
    module = torch.load(shard, weights_only=True)["module"]
    torch.save({"module": {n.replace(".attn.", ".attention."): t for n, t in module.items()}}, shard)
    line = run_cli_error(capsys, broken, "--out", tmp_path / "out")
    assert f"'{shard}' has no tensor 'blocks.0.attn.q_proj.weight'" in line and "not megarank's" in line


def test_mismatched_head_count(capsys, reference_run, tmp_path):
    assert "n_heads=4, --n-heads says 8" in run_cli_error(capsys, reference_run, "--n-heads", "8", "--out",
                                                          tmp_path / "out")
    broken = copy_tag(reference_run, tmp_path)
    marker = json.loads((broken / COMPLETE_MARKER).read_text())
    marker["config"] = marker["config"].replace("n_heads: 4", "n_heads: 3")
    (broken / COMPLETE_MARKER).write_text(json.dumps(marker))
    line = run_cli_error(capsys, broken, "--out", tmp_path / "out")
    assert f"'{broken / COMPLETE_MARKER}'" in line and "not divisible by 3 heads" in line
    # files cut for TP=2 under a marker that says TP=1: q_proj is half the height the head count needs
    sharded = cut_into_tp_shards(tag(reference_run), tmp_path / "tp" / "global_step8", 2)
    marker = json.loads((sharded / COMPLETE_MARKER).read_text())
    marker["layout"]["tp"] = 1
    (sharded / COMPLETE_MARKER).write_text(json.dumps(marker))
    line = run_cli_error(capsys, sharded, "--out", tmp_path / "out")
    assert "mp_rank_00_model_states.pt'" in line and "has shape (16, 32), expected (32, 32)" in line
