"""The per-group weight norms logged during training (megarank/train/weight_norms.py) against the same norms
computed offline from the final checkpoint's weights: one process (ZeRO-1), and two processes at TP=2 under
ZeRO-3 (sharded parameters summed over the TP ranks, replicated ones counted once, partitioned ones gathered),
read back through megarank-rank's checkpoint reader (DeepSpeed's zero_to_fp32 for ZeRO-3). Each tensor's group
and TP layout are read here from the roles table, and a replicated tensor is checked equal on every TP rank.
The runs are the session's shared `reference` and `tp2-zero3` (tests/runs.py), both logging every 2 steps of 8."""

from __future__ import annotations

import math

import pytest
import torch

from megarank.analysis.readers.megarank_ckpt import MegarankCheckpoint
from megarank.ckpt.marker import Marker
from megarank.ckpt.resolve import resolve_tag
from megarank.models.roles import role_of
from tests.helpers import read_metrics

GROUPS = ("no_decay", "attn", "mlp", "other")


def offline_norms(run_dir) -> dict[str, float]:
    """weight_norm/<group> and weight_norm/total from the run's final checkpoint, every TP rank's shards."""
    tag = resolve_tag(run_dir / "checkpoints")
    marker = Marker.read(tag)
    states = tag / ("zero_pp_rank_0_mp_rank_00_model_states.pt" if marker.zero_stage == 3
                    else "mp_rank_00_model_states.pt")
    names = list(torch.load(states, map_location="cpu", weights_only=False)["module"])
    assert "lm_head.weight" in names and "wte.weight" in names
    names.remove("lm_head.weight")  # tied to wte (tie_embeddings): one parameter, counted once
    squares = dict.fromkeys(GROUPS, 0.0)
    with MegarankCheckpoint(tag, names=names) as checkpoint:
        for name in names:
            group, sharded = role_of(name).decay_group, role_of(name).tp_style != "replicated"
            shards = [checkpoint.tensor(t, name).double() for t in range(marker.layout.tp)]
            if not sharded:  # whole on every TP rank
                for shard in shards[1:]:
                    torch.testing.assert_close(shard, shards[0], rtol=0, atol=0)
                shards = shards[:1]
            squares[group] += sum(float(shard.square().sum()) for shard in shards)
    return {**{f"weight_norm/{g}": math.sqrt(v) for g, v in squares.items()},
            "weight_norm/total": math.sqrt(sum(squares.values()))}


def check_logged_norms(run_dir, max_steps: int) -> None:
    records = [r for r in read_metrics(run_dir) if "weight_norm/attn" in r]
    assert [r["step"] for r in records] == list(range(2, max_steps + 1, 2))
    assert all("rank/qk_mean" in r for r in records)  # logged beside the ranks, in the same record
    assert records[0]["weight_norm/attn"] != records[-1]["weight_norm/attn"]
    expected = offline_norms(run_dir)
    logged = {key: records[-1][key] for key in expected}
    assert logged == pytest.approx(expected, rel=1e-9)


def test_one_process(reference_run):
    check_logged_norms(reference_run, 8)


def test_tp2_zero3_two_processes(launched):
    check_logged_norms(launched("tp2-zero3"), 8)
