"""megarank's own checkpoints, read offline for the rank analysis, one tensor-parallel shard at a time.

Which tag: megarank/ckpt/resolve.py (a run dir, its checkpoint.dir, or one global_step<N> tag; a tag cut short
mid-save is refused). What it holds: its marker (megarank/ckpt/marker.py). The tensors: megarank/ckpt/shards.py
reads each TP rank's shard from DeepSpeed's files (module weights or ZeRO's fp32 master copy, any ZeRO stage).

Under TP, rank t holds the q rows and o columns of heads [t·n_heads/tp, (t+1)·n_heads/tp) under the TP=1
names, and the k/v rows of K/V heads [t·n_kv_heads/tp, ...) — under grouped-query attention (model.n_kv_heads)
exactly the ones its query heads read — so each rank's slice is a set of whole heads and is analysed as it lies;
analysis/spectra.py pairs each query head with its K/V head (as for a Hugging Face GQA model). With
model.qk_norm the qk product analysed is W_Q,hᵀW_K,h of the raw weights: the per-head norms sit between them
(the report's details say so). The projections' names come
from the roles table (megarank/models/roles.py).
Other tensors: layers() yields the attention projections only; pass `names` to read more and take each TP
rank's shard through tensor(t, name), read and validated alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from megarank.analysis.readers import AttentionShard, ModelInfo, WeightSource, check_head_shapes, head_layout
from megarank.ckpt.marker import Marker
from megarank.ckpt.shards import CheckpointShards
from megarank.errors import MegarankError
from megarank.models.roles import ATTENTION_ROLES, attention_param_name

QK_NORM_NOTE = ("W_Q,h^T W_K,h of the raw q_proj/k_proj weights; the run's per-head RMSNorm (model.qk_norm) sits "
                "between them and is not part of the product")


class MegarankCheckpoint(WeightSource):
    """One complete tag, validated on open; layers() yields each layer's TP shards.

    names: tensors to read besides the attention projections, each TP rank's shard through tensor(t, name)."""

    def __init__(self, tag_dir: Path, *, weights: str = "module", n_heads: int | None = None,
                 names: Sequence[str] = ()):
        self.tag_dir = tag_dir
        marker = self.marker = Marker.read(tag_dir)
        where = marker.where
        if n_heads is not None and n_heads != marker.n_heads:
            raise MegarankError(f"'{where}': the checkpoint was trained with n_heads={marker.n_heads}, "
                                f"--n-heads says {n_heads}; drop --n-heads")
        self.tp = marker.layout.tp
        n_heads, d_model = marker.n_heads, marker.d_model
        # read as written (a marker from before n_kv_heads / qk_norm lacks them: one K/V head per query head)
        n_kv, qk_norm = int(marker.model.get("n_kv_heads") or n_heads), bool(marker.model.get("qk_norm", False))
        d_head = head_layout(n_heads, n_kv, d_model, None, where=str(where))
        if n_heads % self.tp or n_kv % self.tp:
            raise MegarankError(f"'{where}': n_heads={n_heads} (n_kv_heads={n_kv}) is not divisible by "
                                f"tp={self.tp}; the head count does not match the layout")
        self.n_local, self.n_kv_local = n_heads // self.tp, n_kv // self.tp
        details = {"step": marker.step, "tp": self.tp, "dp": marker.layout.dp, "zero_stage": marker.zero_stage,
                   **{k: v for k, v in marker.decay.items() if k != "wd_other"}, "precision": marker.precision,
                   "weights": weights}
        if qk_norm:
            details["qk_norm"] = QK_NORM_NOTE  # the key the HF reader uses too: megarank-rank prints it
        self.info = ModelInfo(
            family=marker.family, n_layers=marker.n_layers, n_heads=n_heads, n_kv_heads=n_kv, d_model=d_model,
            d_head=d_head, source=str(tag_dir), format="megarank", details=details)
        attention = [attention_param_name(layer, role) for layer in range(self.info.n_layers)
                     for role in ATTENTION_ROLES]
        self._shards = CheckpointShards(tag_dir, marker, [*attention, *sorted(set(names) - set(attention))],
                                        weights=weights)
        try:
            self._check_heads()
        except BaseException:
            self.close()
            raise

    def _check_heads(self) -> None:
        """Each rank's q, o fit its n_heads/tp whole heads and k, v its n_kv_heads/tp, of width d_head."""
        for t in range(self.tp):
            where = self._where(t)
            for layer in range(self.info.n_layers):
                shapes = {role: (name, self._shards.shape(t, name))
                          for role, name in self._attention(layer).items()}
                check_head_shapes(shapes, n_q=self.n_local, n_kv=self.n_kv_local, d_head=self.info.d_head,
                                  d_model=self.info.d_model, where=str(where))

    def _where(self, t: int) -> Path:
        if self._shards.weights == "module" and self._shards.stage < 3:
            return self.tag_dir / f"mp_rank_{t:02d}_model_states.pt"
        return self.tag_dir if self.tp == 1 else self.tag_dir / f"*mp_rank_{t:02d}*"

    @staticmethod
    def _attention(layer: int) -> dict[str, str]:
        return {role: attention_param_name(layer, role) for role in ATTENTION_ROLES}

    def layers(self) -> Iterator[list[AttentionShard]]:
        for layer in range(self.info.n_layers):
            names = self._attention(layer)
            yield [AttentionShard(layer=layer, first_head=t * self.n_local,
                                  **{role: self._shards.tensor(t, name) for role, name in names.items()})
                   for t in range(self.tp)]

    def tensor(self, t: int, name: str) -> torch.Tensor:
        """TP rank t's shard of `name` (an attention projection or one of `names`), in the module's dtype."""
        return self._shards.tensor(t, name)

    def close(self) -> None:
        shards = getattr(self, "_shards", None)
        if shards is not None:
            shards.close()
