"""Sharded checkpoints through DeepSpeed's own save/load, made crash-safe, verified and resumable bit for bit.

The format (tag names, the completion marker and its file records, `latest`) is megarank/ckpt's; this module
does the collective part. A save: every rank writes its shards and RNG state; after a barrier the ranks hash
a share of the tag's files each; rank 0 writes the marker with every file's size and sha256, then `latest`,
then removes what checkpoint.keep_last / keep_every drop. A tag without the marker was cut short (SIGKILL
mid-save) and is never resumed from. A save replaces only a tag of its own step, left by an attempt that was
cut short or went further.

A resume checks the tag's files against the marker first, the ranks sharing the hashing, and every rank
decides from the same gathered verdicts, so all resume from the same tag.

Room: a save is refused before anything is written when checkpoint.dir has less free space than the previous
checkpoint took (rank 0 measures, every rank stops alike); a save that runs out of space anyway ends with one
line naming the directory, its free space and the size a checkpoint needs (megarank/ckpt/space.py).
"""

from __future__ import annotations

import logging
import math
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

from megarank.ckpt import space
from megarank.ckpt.manifest import (Problem, Verdict, build_file_records, combine, file_records, file_sizes,
                                    hash_files, split_by_size, verify_tag)
from megarank.ckpt.marker import Marker
from megarank.ckpt.retention import prune, remove_tag
from megarank.ckpt.tags import (COMPLETE_MARKER, complete_checkpoints, is_complete, tag_for, universal_companion,
                                write_latest)
from megarank.config.schema import CheckpointConfig
from megarank.errors import CollectiveError, MegarankError
from megarank.files import atomic_write
from megarank.models.roles import model_roles, tensor_records

log = logging.getLogger("megarank")


def _rank_and_size() -> tuple[int, int]:
    """(rank, world size); (0, 1) with no process group, so resolve_resume also runs in a plain process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_resume(resume: str, ckpt_dir: Path) -> Path | None:
    """The tag directory to resume from, or None to start fresh; checked before anything is written.

    Collective (every rank calls it, with the same arguments) and the same answer on every rank. auto: the
    newest complete tag whose files pass verification; one that fails is named in a warning and skipped. A
    path: that tag, or an error naming the file that fails."""
    if resume == "none":
        if complete_checkpoints(ckpt_dir):
            raise MegarankError(f"checkpoint.dir '{ckpt_dir}' already holds checkpoints and train.resume=none "
                                "would overwrite them; use train.resume=auto or another train.run_dir")
        return None
    rank, _ = _rank_and_size()
    candidates = _decided_by_rank0(lambda: _resume_candidates(resume, ckpt_dir))
    for tag_dir in candidates:
        verdict = _verified_together(tag_dir)
        if verdict.problem is None:
            if not verdict.verifiable and rank == 0:
                log.warning("checkpoint %s is not verifiable (its marker predates file records): resuming from it "
                            "unchecked", tag_dir.name)
            return tag_dir
        where = f"'{tag_dir / verdict.problem.file}' {verdict.problem.reason}"
        if resume != "auto":
            raise MegarankError(f"train.resume='{resume}' fails verification: {where}; resume from another "
                                f"checkpoint (megarank-ckpt verify {tag_dir.parent} checks them all)")
        if rank == 0:
            log.warning("checkpoint %s fails verification, skipping it: %s", tag_dir.name, where)
    if candidates:
        raise MegarankError(f"no checkpoint in '{ckpt_dir}' passes verification (megarank-ckpt verify {ckpt_dir} "
                            "names each bad file); restore or move them away, or resume from a path")
    return None


def _resume_candidates(resume: str, ckpt_dir: Path) -> list[Path]:
    """The tags to try in order: auto, every complete one newest first; a path, that one."""
    if resume == "auto":
        return [tag for _, tag in reversed(complete_checkpoints(ckpt_dir))]
    tag_dir = Path(resume)
    if not is_complete(tag_dir):
        raise MegarankError(f"train.resume='{resume}' is not a complete megarank checkpoint (no {COMPLETE_MARKER}); "
                            f"point it at a global_step<N> directory or use train.resume=auto")
    return [tag_dir]


def _decided_by_rank0(decide):
    """decide() run on rank 0 alone and its answer (or its error) on every rank: a shared file system may
    show the ranks different listings for a moment, and the ranks must not disagree on what they load."""
    rank, world_size = _rank_and_size()
    answer: list = [None]
    if rank == 0:
        try:
            answer[0] = (decide(), None)
        except MegarankError as err:
            answer[0] = (None, str(err))
        except Exception as err:  # e.g. an unreadable checkpoint dir: the others must not wait for rank 0
            answer[0] = (None, f"rank 0 could not read the checkpoints: {type(err).__name__}: {err}")
    if world_size > 1:
        dist.broadcast_object_list(answer, src=0)
    value, error = answer[0]
    if error is not None:
        raise MegarankError(error)
    return value


def _verified_together(tag_dir: Path) -> Verdict:
    """verify_tag with the hashing shared over the ranks; every rank gets the same combined verdict."""
    rank, world_size = _rank_and_size()
    try:
        mine = verify_tag(tag_dir, part=rank, parts=world_size)
    except Exception as err:  # a bug or I/O error here must still reach the gather below, or the others hang
        mine = Verdict(problem=Problem(COMPLETE_MARKER, f"could not be checked on rank {rank}: {err}"))
    verdicts = [mine]
    if world_size > 1:
        verdicts = [None] * world_size
        dist.all_gather_object(verdicts, mine)
    return combine(verdicts)


def universal_checkpoint_info(model, vocab_size: int) -> dict:
    """Client state that lets DeepSpeed's ds_to_universal re-shard this checkpoint for another layout: which
    parameters are split by rows (dim 1) or by vocabulary, and which are replicated across TP ranks (the rest
    are split by columns), read off the roles table. Patterns are exact names: DeepSpeed requires each one to
    match."""
    from deepspeed.checkpoint import constants as c

    roles = model_roles(model)

    def names(style: str) -> list[str]:
        return [re.escape(n) + "$" for n, role in roles.items() if role.tp_style == style]

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


def save_checkpoint(engine, ckpt_dir: Path, step: int, client_state: dict, meta: dict, tp_rng=None,
                    retention: CheckpointConfig | None = None) -> Path:
    """Collective: every rank writes its shards; the tag becomes visible to resume only when all have, with
    every file's size and sha256 and every parameter's role and global shape in its marker. meta: the marker's
    layout, zero_stage, config and data. retention: the keep_last / keep_every policy applied after.

    Stops before writing (every rank, a CollectiveError) when the previous checkpoint's size says this one will
    not fit, and ends with one line (a MegarankError) when the disk fills during the save."""
    rank = dist.get_rank()
    tag = tag_for(step)
    tag_dir = ckpt_dir / tag
    tensors = tensor_records(engine.module, meta["layout"]["tp"])
    need = None
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        # a leftover (cut short, or from an attempt that went further) goes with its universal form, which
        # would otherwise be reused for this step's resume at another layout with the old weights
        if tag_dir.exists() or universal_companion(tag_dir).exists():
            if is_complete(tag_dir):  # this run branched off an older tag: say what it replaces
                log.warning("replacing checkpoint %s, saved by an earlier attempt that went further", tag)
            remove_tag(tag_dir)
        need = space.previous_need(ckpt_dir, step)
    refusal = [space.too_little_room(ckpt_dir, need, tag) if need is not None else None]
    dist.broadcast_object_list(refusal, src=0)  # also holds every rank until rank 0 has cleared the tag
    if refusal[0] is not None:
        raise CollectiveError(refusal[0])
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
        tag_dir.mkdir(parents=True, exist_ok=True)
        rng = {**_rng_state(), "tp_dropout": tp_rng.state_dict() if tp_rng else None}
        atomic_write(tag_dir / f"rng_rank{rank}.pt", lambda f: torch.save(rng, f), binary=True)
        dist.barrier()
        files = _file_records_together(tag_dir)
        if rank == 0:
            marker = Marker.from_json({"step": step, "time": time.time(), **meta, "files": files, "tensors": tensors})
            marker.write(tag_dir)
            write_latest(ckpt_dir, tag)
    except (OSError, RuntimeError) as err:
        need = need or space.previous_need(ckpt_dir, step) or space.estimated_need(
            sum(math.prod(record["shape"]) for record in tensors.values()))
        if space.is_out_of_space(err, ckpt_dir, need):
            raise space.out_of_space(ckpt_dir, need, tag) from err
        raise
    if rank == 0 and retention is not None:
        removed = prune(ckpt_dir, step, retention.keep_last, retention.keep_every)
        if removed:
            log.info("removed %s (checkpoint.keep_last=%d, keep_every=%d)", ", ".join(t.name for t in removed),
                     retention.keep_last, retention.keep_every)
    dist.barrier()
    return tag_dir


def _file_records_together(tag_dir: Path) -> dict | None:
    """The marker's file records, each rank hashing a share of the files (about equal bytes); on rank 0 the
    whole record, elsewhere None. Rank 0 lists the files, so every rank hashes from the same list."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    listing = [file_sizes(tag_dir) if rank == 0 else None]
    dist.broadcast_object_list(listing, src=0)
    sizes = listing[0]
    digests = hash_files(tag_dir, split_by_size(sizes, world_size)[rank])
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, digests)  # as in failures.py, which NCCL runs rely on
    if rank != 0:
        return None
    return file_records(sizes, {name: digest for part in gathered for name, digest in part.items()})


def needs_universal(tag_dir: Path, tp: int, dp: int, zero_stage: int) -> bool:
    """True when the checkpoint was written at another layout: ZeRO shards then need re-partitioning through
    DeepSpeed's universal checkpoint (ZeRO-1/2). Changing TP, the ZeRO stage, or the data-parallel size under
    ZeRO-3 is refused with the layout to relaunch at."""
    marker = Marker.read(tag_dir)
    saved = {"tp": marker.layout.tp, "dp": marker.layout.dp, "zero_stage": marker.zero_stage}
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
    target = universal_companion(tag_dir)
    if dist.get_rank() == 0 and not is_complete(target):
        tmp = tag_dir.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                               str(tag_dir), "--output_folder", str(tmp), "--num_extract_workers", "1",
                               "--num_merge_workers", "1"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise MegarankError(f"converting '{tag_dir}' to a universal checkpoint failed: "
                                f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        Marker.read(tag_dir).replace(files=build_file_records(tmp)).write(tmp)
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
