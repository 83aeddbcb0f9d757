"""Sharded checkpoints through DeepSpeed's own save/load, made crash-safe and resumable bit for bit.

Layout of checkpoint.dir (DeepSpeed's, so its tools such as zero_to_fp32.py read it):
    global_step<N>/            one tag per save: DeepSpeed's model/optimizer shards
        rng_rank<R>.pt         this rank's RNG states (DeepSpeed does not save them)
        megarank_complete.json written last, by rank 0, after every rank finished: the tag's commit marker
    latest                     name of the newest complete tag (written atomically, for DeepSpeed's tools)

A tag without the marker was cut short (SIGKILL mid-save) and is never resumed from; `auto` picks the newest
complete tag. Nothing is overwritten except such an incomplete leftover of the same step.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megarank.errors import MegarankError

COMPLETE_MARKER = "megarank_complete.json"
_TAG = re.compile(r"^global_step(\d+)$")


def tag_for(step: int) -> str:
    return f"global_step{step}"


def complete_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, tag dir) of every complete checkpoint, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for child in ckpt_dir.iterdir():
        match = _TAG.match(child.name)
        if match and (child / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_resume(resume: str, ckpt_dir: Path) -> Path | None:
    """The tag directory to resume from, or None to start fresh; checked before anything is written."""
    existing = complete_checkpoints(ckpt_dir)
    if resume == "auto":
        return existing[-1][1] if existing else None
    if resume == "none":
        if existing:
            raise MegarankError(f"checkpoint.dir '{ckpt_dir}' already holds checkpoints and train.resume=none "
                                "would overwrite them; use train.resume=auto or another train.run_dir")
        return None
    tag_dir = Path(resume)
    if not (tag_dir / COMPLETE_MARKER).is_file():
        raise MegarankError(f"train.resume='{resume}' is not a complete megarank checkpoint (no {COMPLETE_MARKER}); "
                            f"point it at a global_step<N> directory or use train.resume=auto")
    return tag_dir


def universal_checkpoint_info(model, vocab_size: int) -> dict:
    """Client state that lets DeepSpeed's ds_to_universal re-shard this checkpoint for another layout: which
    parameters are split by rows (dim 1) or by vocabulary, and which are replicated across TP ranks (the rest
    are split by columns). Patterns are exact names: DeepSpeed requires each one to match."""
    from deepspeed.checkpoint import constants as c

    from megarank.parallel.tensor_parallel import param_shard_styles

    styles = param_shard_styles(model)

    def names(style: str) -> list[str]:
        return [re.escape(n) + "$" for n, s in styles.items() if s == style]

    return {c.UNIVERSAL_CHECKPOINT_INFO: {
        c.UNIVERSAL_CHECKPOINT_VERSION_KEY: c.UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        c.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: names("row"),
        c.VOCABULARY_PARAMETER_PATTERNS: names("vocab"),
        c.TP_REPLICATED_PARAMETER_PATTERNS: names("replicated"),
        "original_vocab_size": vocab_size,  # megarank's padded size is part of the model, whatever the TP size
    }}


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(engine, ckpt_dir: Path, step: int, client_state: dict, meta: dict, tp_rng=None) -> Path:
    """Collective: every rank writes its shards; the tag becomes visible to resume only when all have."""
    rank = dist.get_rank()
    tag = tag_for(step)
    tag_dir = ckpt_dir / tag
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tag_dir.exists():  # only an incomplete leftover can be here: complete tags are never re-saved
            shutil.rmtree(tag_dir)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    tag_dir.mkdir(parents=True, exist_ok=True)
    tmp = tag_dir / f".rng_rank{rank}.pt.tmp"
    torch.save({**_rng_state(), "tp_dropout": tp_rng.state_dict() if tp_rng else None}, tmp)
    os.replace(tmp, tag_dir / f"rng_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        marker = {"step": step, "time": time.time(), **meta}
        _atomic_write_text(tag_dir / COMPLETE_MARKER, json.dumps(marker, indent=2))
        _atomic_write_text(ckpt_dir / "latest", tag)
    dist.barrier()
    return tag_dir


def saved_layout(tag_dir: Path) -> dict:
    """{'tp', 'dp', 'world_size', 'zero_stage'} of the run that wrote this checkpoint."""
    marker = json.loads((tag_dir / COMPLETE_MARKER).read_text())
    return {**marker["layout"], "zero_stage": marker["zero_stage"]}


def needs_universal(tag_dir: Path, tp: int, dp: int, zero_stage: int) -> bool:
    """True when the checkpoint was written at another layout: ZeRO shards then need re-partitioning through
    DeepSpeed's universal checkpoint (ZeRO-1/2). Changing TP, the ZeRO stage, or the data-parallel size under
    ZeRO-3 is refused with the layout to relaunch at."""
    saved = saved_layout(tag_dir)
    if saved["tp"] != tp:
        raise MegarankError(f"checkpoint '{tag_dir}' was written at parallel.tp={saved['tp']}, this run has tp={tp}; "
                            f"resume with parallel.tp={saved['tp']} (only the data-parallel size may change)")
    if saved["zero_stage"] != zero_stage:
        raise MegarankError(f"checkpoint '{tag_dir}' was written with zero.stage={saved['zero_stage']}, this run "
                            f"has {zero_stage}; resume with zero.stage={saved['zero_stage']}")
    if saved["dp"] != dp and zero_stage == 3:
        # ds_to_universal converts ZeRO-3 shards, but the optimizer state came back inexact in our test (the
        # weights loaded, the next update differed by 2e-4): refuse rather than continue a different run
        raise MegarankError(f"checkpoint '{tag_dir}' was written at data-parallel size {saved['dp']} with ZeRO-3; "
                            f"only ZeRO-1/2 checkpoints resume at another size: launch {saved['dp'] * tp} "
                            "processes")
    return saved["dp"] != dp


def universal_dir(tag_dir: Path) -> Path:
    """DeepSpeed's universal (layout-free) form of a tag, made once by rank 0 with ds_to_universal, atomically."""
    target = tag_dir.with_name(tag_dir.name + "_universal")
    if dist.get_rank() == 0 and not (target / COMPLETE_MARKER).is_file():
        tmp = tag_dir.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                               str(tag_dir), "--output_folder", str(tmp), "--num_extract_workers", "1",
                               "--num_merge_workers", "1"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise MegarankError(f"converting '{tag_dir}' to a universal checkpoint failed: "
                                f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        shutil.copy(tag_dir / COMPLETE_MARKER, tmp / COMPLETE_MARKER)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    dist.barrier()
    return target


def load_checkpoint(engine, tag_dir: Path, tp_rng=None, *, universal: bool = False) -> dict:
    """Load shards, optimizer and scheduler state and this rank's RNG; returns megarank's client state.

    universal: the engine was built with checkpoint.load_universal and reads the tag's universal form."""
    source = universal_dir(tag_dir) if universal else tag_dir
    _, client_state = engine.load_checkpoint(str(source.parent), tag=source.name, load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
    if client_state is None or "megarank" not in client_state:
        raise MegarankError(f"'{tag_dir}' could not be loaded as a megarank checkpoint; check the path and "
                            "that it was written by megarank-train")
    rng_file = tag_dir / f"rng_rank{dist.get_rank()}.pt"
    if rng_file.is_file():  # absent when resuming on more ranks than saved: fresh streams then
        state = torch.load(rng_file, weights_only=False)
        _set_rng_state(state)
        if tp_rng is not None and state.get("tp_dropout"):
            tp_rng.load_state_dict(state["tp_dropout"])
    return client_state["megarank"]
