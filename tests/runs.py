"""The launched training runs the suite shares: each named layout is trained once per session, on first use,
through the entry points a user runs (megarank-train in one process, the DeepSpeed launcher, or
tools/launch_node.sh per simulated node), and every test that needs that layout reads the same run. Under
`make test`'s pytest-xdist the two test workers share one directory (tests/conftest.py): the first worker to
ask for a run trains it under a file lock, and a worker asking meanwhile waits on the lock and reads the same
run (pytest-xdist's "Making session-scoped fixtures execute only once").

A shared run is read-only to tests: one that must change a run (resume it, damage a checkpoint) copies it
first (shutil.copytree) and relaunches the copy with `LaunchedRuns.relaunch`, the same overrides, so the result
is comparable bit for bit. tests/conftest.py checks at the end of the session that no shared run was changed.

Which test files read which run is written beside each entry: a change to a run's overrides is a change to
all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from tests.helpers import REPO, TINY, clean_env, free_port, run_training

# The reference's schedule, kept by every run compared with it: 8 steps (the LR schedule depends on max_steps),
# checkpoints at 4 and 8.
EIGHT_STEPS = ("train.max_steps=8", "checkpoint.every=4")
# What the data-parallel runs log beside the losses: the validation loss and the attention ranks.
DP2_EXTRA = ("train.eval_every=8", "analysis.every=4")
# 5 steps at TP=2 with dropout on: attention dropout on the TP-local stream, which a recompute must replay.
DROPOUT_BASE = ("train.max_steps=5", "checkpoint.every=0", "parallel.tp=2", "model.dropout=0.1")


@dataclass(frozen=True)
class Launch:
    """One launched run of the tiny GPT (tests/helpers.py TINY) on the session's tiny corpus."""

    overrides: tuple[str, ...]
    nproc: int = 1
    """Processes per node: 1 runs `python -m megarank.train`, more the DeepSpeed launcher."""
    nodes: int = 1
    """More than 1: that many simulated nodes on localhost, each started by tools/launch_node.sh."""
    readers: tuple[str, ...] = ()
    """The test files that read this run."""


LAUNCHES = {
    "reference": Launch(
        (*EIGHT_STEPS, "zero.stage=1", "analysis.every=2"),
        readers=("the single-process reference of nearly every training, analysis, evaluation, ckpt and hf test; "
                 "train/test_weight_norms.py (one process)", "train/test_bf16.py (the fp32 side)")),
    # data parallelism: 2 processes at each ZeRO stage, validated at the last step
    "dp2-zero1": Launch((*EIGHT_STEPS, "zero.stage=1", *DP2_EXTRA), nproc=2,
                        readers=("train/test_data_parallel.py", "train/test_verified_resume.py (two ranks)",
                                 "train/test_shm_buffers.py")),
    "dp2-zero2": Launch((*EIGHT_STEPS, "zero.stage=2", *DP2_EXTRA), nproc=2, readers=("train/test_data_parallel.py",)),
    "dp2-zero3": Launch((*EIGHT_STEPS, "zero.stage=3", *DP2_EXTRA), nproc=2,
                        readers=("train/test_data_parallel.py", "train/test_resume.py (two processes)",
                                 "analysis/test_megarank_ckpt_layouts.py", "evaluation/test_layouts.py")),
    # tensor parallelism
    "tp2-zero1": Launch((*EIGHT_STEPS, "parallel.tp=2", "zero.stage=1"), nproc=2,
                        readers=("parallel/test_tensor_parallel.py (and its resume)", "evaluation/test_layouts.py",
                                 "train/test_levers.py")),
    "tp2-zero3": Launch((*EIGHT_STEPS, "parallel.tp=2", "zero.stage=3", "analysis.every=2"), nproc=2,
                        readers=("parallel/test_tensor_parallel.py", "train/test_weight_norms.py (TP=2, ZeRO-3)",
                                 "hf/test_export.py")),
    "tp2-dp2-zero2": Launch((*EIGHT_STEPS, "parallel.tp=2", "zero.stage=2"), nproc=4,
                            readers=("parallel/test_tensor_parallel.py",)),
    "two-nodes-tp2-dp2-zero1": Launch((*EIGHT_STEPS, "parallel.tp=2", "zero.stage=1", "train.eval_every=8"),
                                      nproc=2, nodes=2,
                                      readers=("train/test_multinode.py", "parallel/test_tensor_parallel.py")),
    "zero0": Launch(("train.max_steps=8", "checkpoint.every=0", "zero.stage=0"),
                    readers=("analysis/test_megarank_ckpt_layouts.py", "train/test_grad_norm.py (one process)",
                             "bench/test_reference_loop.py")),
    # the levers (compile, activation checkpointing, chunked loss), whose numerics in-process tests compare one
    # by one (tests/parallel/test_activation_checkpointing.py, tests/train/test_compile.py,
    # tests/models/test_chunked_loss.py): in real runs at TP=2, recomputation under ZeRO-3 with dropout on
    # against the plain run with dropout, and every lever together against `tp2-zero1` (compile cannot trace
    # the TP-local dropout stream's fork: a graph break, so that run has no dropout)
    "tp2-dropout": Launch((*DROPOUT_BASE, "zero.stage=1"), nproc=2, readers=("train/test_levers.py",)),
    "tp2-dropout-zero3-recompute": Launch(
        (*DROPOUT_BASE, "zero.stage=3", "train.activation_checkpointing=selective",
         "train.activation_checkpointing_every=1", "model.loss_chunk_tokens=20"),
        nproc=2, readers=("train/test_levers.py",)),
    "tp2-zero3-every-lever": Launch(
        ("train.max_steps=8", "checkpoint.every=0", "parallel.tp=2", "zero.stage=3", "train.eval_every=8",
         "train.compile=true", "train.activation_checkpointing=full", "model.loss_chunk_tokens=20"),
        nproc=2, readers=("train/test_levers.py",)),
    # the tiny LLaMA (tests/helpers.py LLAMA_MODEL on the tiny GPT: RMSNorm, SwiGLU, GQA, q/k norms, RoPE), one
    # process and TP=2×DP=2, 8 steps each with checkpoints at 4 and 8
    "llama-reference": Launch(
        (*EIGHT_STEPS, "model.position=rotary", "model.norm=rmsnorm", "model.mlp=swiglu", "model.n_kv_heads=2",
         "model.qk_norm=true", "model.ffn_multiple=16", "zero.stage=1", "analysis.every=4"),
        readers=("parallel/test_llama_tensor_parallel.py", "analysis/test_llama_rank.py", "hf/test_export.py")),
    "llama-tp2-dp2-zero1": Launch(
        (*EIGHT_STEPS, "model.position=rotary", "model.norm=rmsnorm", "model.mlp=swiglu", "model.n_kv_heads=2",
         "model.qk_norm=true", "model.ffn_multiple=16", "parallel.tp=2", "zero.stage=1", "analysis.every=4"),
        nproc=4, readers=("parallel/test_llama_tensor_parallel.py", "analysis/test_llama_rank.py")),
}


def shm_buffers(port: int) -> set[str]:
    """DeepSpeed's CPU shared-memory all-reduce buffers of this user's job on master port `port`
    (tests/train/test_shm_buffers.py): named by user, address, port and rank, so another job running beside it
    (a second test worker) has its own."""
    return {p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*")}


def launch_nodes(launch: Launch, run_dir: Path, corpus: Path, *extra: str, timeout: int = 300,
                 port: int | None = None) -> str:
    """launch.nodes simulated nodes on localhost, each tools/launch_node.sh with launch.nproc processes; returns
    their output, node 0's first."""
    args = ["configs/default.yaml", *TINY, f"data.path={corpus}", f"train.run_dir={run_dir}", *launch.overrides,
            *extra]
    port = str(port or free_port())
    nodes = [subprocess.Popen(["bash", "tools/launch_node.sh", *args], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=clean_env(NNODES=str(launch.nodes), NODE_RANK=str(rank), NPROC=str(launch.nproc),
                                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for rank in range(launch.nodes)]
    outputs = [node.communicate(timeout=timeout)[0] for node in nodes]
    if any(node.returncode != 0 for node in nodes):
        raise AssertionError(f"training failed ({[node.returncode for node in nodes]}):\n"
                             + "\n".join(output[-3000:] for output in outputs))
    return "\n".join(outputs)


@dataclass
class Launched:
    """A shared run, once trained."""

    run_dir: Path
    output: str
    """stdout and stderr of the launch."""
    port: int
    """The master port of the launch, which names its shared-memory buffers (see shm_buffers)."""
    fingerprint: dict[str, tuple[int, int]]


def once(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """root/name, filled by build(root/name) by the first test worker of the session that asks for it, under the
    file lock root/name.lock: a worker asking meanwhile waits, then reads what the first one built. A build that
    failed fails every later asker with its message, without building again."""
    where, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    where.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f"{name}.lock"):
        if failed.exists():
            raise AssertionError(f"{name!r}, shared by the session's test workers, failed earlier:\n{failed.read_text()}")
        if not done.exists():
            try:
                build(where)
            except Exception as err:
                failed.write_text(f"{type(err).__name__}: {err}")
                raise
            done.touch()
    return where


def fingerprint(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file under run_dir with its size and modification time: what a test must not change."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


class LaunchedRuns:
    """The session's shared runs: `runs(name)` is the run directory of LAUNCHES[name], trained on first use.
    `root` is shared by every test worker of the session (see `once`): root/NAME/run is the run, and
    root/NAME/launched.json its output and master port."""

    def __init__(self, corpus: Path, root: Path):
        self.corpus, self.root = corpus, root
        self.done: dict[str, Launched] = {}

    def __call__(self, name: str) -> Path:
        return self.get(name).run_dir

    def get(self, name: str) -> Launched:
        if name not in self.done:
            self.done[name] = self._train_once(name)
        return self.done[name]

    def _train_once(self, name: str) -> Launched:
        def train(where: Path) -> None:
            port = free_port()
            output = self._launch(LAUNCHES[name], where / "run", port=port)
            (where / "launched.json").write_text(json.dumps({"port": port, "output": output}))

        where = once(self.root, name, train)
        launched = json.loads((where / "launched.json").read_text())
        return Launched(where / "run", launched["output"], launched["port"], fingerprint(where / "run"))

    def output(self, name: str) -> str:
        return self.get(name).output

    def relaunch(self, name: str, run_dir: Path, *extra: str) -> str:
        """LAUNCHES[name] again into run_dir (a copy of the shared run: it resumes), extra overrides last; returns
        the output."""
        return self._launch(LAUNCHES[name], run_dir, *extra)

    def _launch(self, launch: Launch, run_dir: Path, *extra: str, port: int | None = None) -> str:
        if launch.nodes > 1:
            return launch_nodes(launch, run_dir, self.corpus, *extra, port=port)
        proc = run_training(run_dir, self.corpus, *launch.overrides, *extra, nproc=launch.nproc, port=port)
        return proc.stdout + proc.stderr

    def changed(self) -> list[str]:
        """The shared runs a test changed in place instead of copying first."""
        return [name for name, run in self.done.items() if fingerprint(run.run_dir) != run.fingerprint]
