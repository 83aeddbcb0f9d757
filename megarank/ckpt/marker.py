"""The completion marker, megarank_complete.json: what a checkpoint holds, read in one place.

Written last by rank 0 once every rank's files are on disk (a tag without it was cut short and is never read).
Its fields (JSON):
    step        the optimizer step saved
    time        when (seconds since the epoch)
    layout      {tp, dp, world_size} of the run that wrote it
    zero_stage  DeepSpeed's ZeRO stage
    config      the run's resolved config, as YAML text
    data        the training data's identity (tokenizer and shard sha256s); absent in older markers
    files       {relative path: {size, sha256}} of every other file of the tag (manifest.py); absent in older
                markers, which then cannot be verified
    tensors     {parameter name: {role, decay_group, tp_style, shape}}, shape the global (TP=1) one, from
                megarank/models/roles.py at save time: the offline tools read a checkpoint by these records,
                without the model or megarank.parallel. Markers written before it fall back to
                roles.role_of(name) (the shape is then unknown)
    decay_groups the optimizer's param groups in order (optim/groups.py group_layout: 'attn' or 'qk', 'ov');
                absent in older markers, whose groups are their config's layout
    decay       {group: weight decay} in effect at the checkpoint: what its last optimizer step applied
                (optim/decay.py); absent in older markers, whose decay is their configured one

Marker.read is the one reader: training, resume checks, megarank-rank, megarank-eval and megarank-ckpt all go
through it, and a bad file is one MarkerError line. Importing this module pulls in neither torch nor DeepSpeed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from megarank.errors import MegarankError
from megarank.files import atomic_write_json

COMPLETE_MARKER = "megarank_complete.json"


class MarkerError(MegarankError):
    """A marker that cannot be read; `reason` is the message without the file's path."""

    def __init__(self, where: Path | None, reason: str):
        super().__init__(f"'{where}' {reason}" if where is not None else reason)
        self.reason = reason


@dataclass(frozen=True)
class Layout:
    """The process layout of the run that wrote a checkpoint."""

    tp: int
    dp: int
    world_size: int


@dataclass(frozen=True)
class TensorRecord:
    """One saved parameter: its role in the model (models/roles.py) and its global (TP=1) shape."""

    role: str
    decay_group: str
    tp_style: str
    """'column', 'row', 'vocab' or 'replicated' (how the TP ranks' shards tile the whole tensor)."""
    shape: tuple[int, ...] | None
    """None when read from a marker written before tensor records (the role then comes from the name)."""


@dataclass(frozen=True)
class Marker:
    """A checkpoint's completion marker (fields as in the module docstring)."""

    step: int
    layout: Layout
    zero_stage: int
    config: str | None = None
    time: float | None = None
    data: dict = field(default_factory=dict)
    files: dict | None = None
    tensors: dict[str, TensorRecord] | None = None
    decay_groups: tuple[str, ...] | None = None
    decay_in_effect: dict[str, float] | None = None
    """The marker's 'decay' field."""
    where: Path | None = field(default=None, compare=False, repr=False)
    """The marker file it was read from (for messages); None for one built in memory."""

    # --- reading and writing -------------------------------------------------------------------------------

    @classmethod
    def read(cls, tag_dir: Path) -> Marker:
        """The marker of the tag at tag_dir; a MarkerError (one line naming the file) if it cannot be read."""
        path = Path(tag_dir) / COMPLETE_MARKER
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise MarkerError(path, f"cannot be read as a checkpoint marker ({_first_line(err)})") from None
        return cls.from_json(document, where=path)

    @classmethod
    def from_json(cls, document, *, where: Path | None = None) -> Marker:
        """The marker a parsed megarank_complete.json holds, its fields checked."""
        if not isinstance(document, dict):
            raise MarkerError(where, "is not a checkpoint marker (a JSON object)")
        try:
            raw_layout = document["layout"]
            tp, dp = int(raw_layout["tp"]), int(raw_layout["dp"])
            layout = Layout(tp=tp, dp=dp, world_size=int(raw_layout.get("world_size", tp * dp)))
            step, zero_stage = int(document["step"]), int(document["zero_stage"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise MarkerError(where, f"is not a valid megarank checkpoint marker (no valid {_first_line(err)})") \
                from None
        config = document.get("config")
        if config is not None and not isinstance(config, str):
            raise MarkerError(where, "has a malformed 'config' (the resolved YAML as text)")
        data = document.get("data") or {}
        if not isinstance(data, dict):
            raise MarkerError(where, "has a malformed 'data' record")
        groups, decay = document.get("decay_groups"), document.get("decay")
        try:
            groups = None if groups is None else tuple(str(g) for g in groups)
            decay = None if decay is None else {str(g): float(wd) for g, wd in decay.items()}
        except (AttributeError, TypeError, ValueError):
            raise MarkerError(where, "has a malformed 'decay' or 'decay_groups' record") from None
        return cls(step=step, layout=layout, zero_stage=zero_stage, config=config, time=document.get("time"),
                   data=data, files=_files(document.get("files"), where), tensors=_tensors(document.get("tensors"),
                                                                                           where),
                   decay_groups=groups, decay_in_effect=decay, where=where)

    def to_json(self) -> dict:
        document = {"step": self.step, "time": self.time, "layout": dataclasses.asdict(self.layout),
                    "zero_stage": self.zero_stage, "config": self.config, "data": self.data}
        if self.files is not None:
            document["files"] = self.files
        if self.decay_groups is not None:
            document["decay_groups"] = list(self.decay_groups)
        if self.decay_in_effect is not None:
            document["decay"] = self.decay_in_effect
        if self.tensors is not None:
            document["tensors"] = {name: {**dataclasses.asdict(record), "shape": list(record.shape)}
                                   for name, record in self.tensors.items()}
        return document

    def write(self, tag_dir: Path) -> None:
        """Commit the tag: once this file exists, resume and the offline tools read the tag."""
        atomic_write_json(Path(tag_dir) / COMPLETE_MARKER, self.to_json())

    def replace(self, **changes) -> Marker:
        return dataclasses.replace(self, **changes)

    # --- the run's config ----------------------------------------------------------------------------------

    @cached_property
    def config_tree(self) -> dict:
        """The resolved config, parsed."""
        if self.config is None:
            raise MarkerError(self.where, "records no config: not written by megarank-train")
        try:
            tree = yaml.safe_load(self.config) or {}
        except yaml.YAMLError as err:
            raise MarkerError(self.where, f"has a config that is not valid YAML ({_first_line(err)})") from None
        if not isinstance(tree, dict):
            raise MarkerError(self.where, "has a config that is not a YAML mapping")
        return tree

    def section(self, name: str) -> dict:
        """One section of the resolved config ('model', 'optim', 'data', ...) as written; {} if absent."""
        value = self.config_tree.get(name) or {}
        if not isinstance(value, dict):
            raise MarkerError(self.where, f"has a config whose '{name}' is not a mapping")
        return value

    @property
    def model(self) -> dict:
        """The model section as written (model_config() gives it as the schema's ModelConfig)."""
        return self.section("model")

    @property
    def seed(self) -> int:
        from megarank.config.schema import ExperimentConfig

        return self.config_tree.get("seed", ExperimentConfig.seed)

    @property
    def family(self) -> str:
        return str(self.model.get("family", "gpt"))

    def _model_int(self, key: str) -> int:
        try:
            return int(self.model[key])
        except (KeyError, TypeError, ValueError):
            raise MarkerError(self.where, f"has no valid model.{key} in its config") from None

    @property
    def n_layers(self) -> int:
        return self._model_int("n_layers")

    @property
    def d_model(self) -> int:
        return self._model_int("d_model")

    @property
    def n_heads(self) -> int:
        return self._model_int("n_heads")

    @property
    def decay(self) -> dict:
        """{'wd_attn', 'wd_qk', 'wd_ov', 'wd_mlp', 'wd_other', 'decoupled'}: the decay in effect at this
        checkpoint (the 'decay' record; a marker without one gives its configured decay), None where not
        recorded; wd_attn is None when W_Q, W_K and W_V, W_O decay differently. The paper's λ, labels of the rank
        tools' tables."""
        optim = self.section("optim")
        if self.decay_in_effect is None:
            attn = optim.get("wd_attn")
            qk, ov = (attn if optim.get(k) is None else optim.get(k) for k in ("wd_qk", "wd_ov"))
            mlp, other = optim.get("wd_mlp"), optim.get("wd_other")
        else:
            attn = self.decay_in_effect.get("attn")
            qk, ov = (self.decay_in_effect.get(k, attn) for k in ("qk", "ov"))
            mlp, other = self.decay_in_effect.get("mlp"), self.decay_in_effect.get("other")
        return {"wd_attn": qk if qk == ov else None, "wd_qk": qk, "wd_ov": ov, "wd_mlp": mlp, "wd_other": other,
                "decoupled": optim.get("decoupled")}

    @property
    def group_layout(self) -> tuple[str, ...]:
        """The optimizer's group names the checkpoint was saved with: recorded, or for an older marker its
        config's layout (optim/groups.py; torch-importing)."""
        if self.decay_groups is not None:
            return self.decay_groups
        from megarank.optim.groups import group_layout

        return group_layout(self.optim_config())

    @property
    def precision(self) -> str | None:
        return self.section("train").get("precision")

    def model_config(self, **changes):
        """The run's ModelConfig through the schema (its checks run), today's defaults for keys added since the
        checkpoint was written, keys since removed dropped; `changes` applied with dataclasses.replace."""
        from megarank.config.schema import ModelConfig

        return self._rebuilt(ModelConfig, "model", changes)

    def optim_config(self):
        """The run's OptimConfig, rebuilt as model_config() is."""
        from megarank.config.schema import OptimConfig

        return self._rebuilt(OptimConfig, "optim", {})

    def _rebuilt(self, schema, name: str, changes: dict):
        known = {k: v for k, v in self.section(name).items() if k in schema.__dataclass_fields__}
        try:
            return dataclasses.replace(schema(**known), **changes)
        except (TypeError, ValueError, MegarankError) as err:
            raise MarkerError(self.where, f"has a {name} config that cannot be rebuilt ({_first_line(err)})") \
                from None

    # --- the saved tensors ---------------------------------------------------------------------------------

    def tensor_record(self, name: str) -> TensorRecord:
        """What the parameter `name` is: its recorded role, or for a marker without tensor records the role its
        name has in megarank/models/roles.py."""
        if self.tensors is not None:
            if name not in self.tensors:
                raise MarkerError(self.where, f"records no tensor '{name}'")
            return self.tensors[name]
        from megarank.models.roles import role_of  # torch-importing: only old markers need it

        role = role_of(name)
        return TensorRecord(role=role.name, decay_group=role.decay_group, tp_style=role.tp_style, shape=None)

    @property
    def n_bytes(self) -> int | None:
        """The bytes of the tag's files, from its file records (None for a marker without them)."""
        return None if self.files is None else sum(record["size"] for record in self.files.values())


def _files(records, where: Path | None) -> dict | None:
    if records is None:
        return None
    if not isinstance(records, dict) or not all(isinstance(r, dict) and isinstance(r.get("size"), int)
                                                and isinstance(r.get("sha256"), str) for r in records.values()):
        raise MarkerError(where, "has a malformed 'files' record")
    return records


def _tensors(records, where: Path | None) -> dict[str, TensorRecord] | None:
    if records is None:
        return None
    try:
        return {str(name): TensorRecord(role=str(r["role"]), decay_group=str(r["decay_group"]),
                                        tp_style=str(r["tp_style"]), shape=tuple(int(n) for n in r["shape"]))
                for name, r in records.items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise MarkerError(where, "has a malformed 'tensors' record") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
