"""Launch real training runs in 1 or more CPU processes through the entry points a user runs, and read
what they wrote."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


# The tiny GPT every multi-process test trains: a few seconds for a handful of steps.
TINY = ["model.n_layers=2", "model.d_model=32", "model.n_heads=4", "model.seq_len=16", "train.micro_batch=2",
        "train.global_batch=8", "optim.warmup_steps=2", "train.eval_every=0", "train.progress=false",
        "train.precision=fp32", "optim.wd_attn=0.1", "optim.wd_mlp=0.05", "optim.wd_other=0.01"]


# The tiny LLaMA: TINY's sizes with the LLaMA options of configs/model/llama_cpu_small.yaml (RMSNorm, SwiGLU,
# 2 K/V heads for 4 query heads, RoPE, tied embeddings) plus the per-head q/k norms, so that every option of the
# block is trained by the launched runs. LLAMA_MODEL alone turns configs/default.yaml's tiny GPT into it.
LLAMA_MODEL = ["model.position=rotary", "model.norm=rmsnorm", "model.mlp=swiglu", "model.n_kv_heads=2",
               "model.qk_norm=true", "model.ffn_multiple=16", "model.tie_embeddings=true"]
LLAMA_TINY = [*TINY, *LLAMA_MODEL]


DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a launched run: without the process-group variables an in-process test may have
    set (a child would otherwise try to join the pytest process's store), and with this interpreter as
    tools/launch_node.sh's PYTHON (see deepspeed_launcher)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **extra}


def run_cli(*args: str, timeout: int = 120, **env: str) -> subprocess.CompletedProcess:
    """`python -m megarank.train ARGS` in one process, output captured."""
    return subprocess.run([sys.executable, "-m", "megarank.train", *args], cwd=REPO, env=clean_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_launcher(nproc: int, port: int | None = None) -> list[str]:
    """The DeepSpeed launcher for nproc local CPU processes, as `python -m` (what the `deepspeed` script runs)
    under this interpreter, so that every process of the suite has one sys.prefix: DeepSpeed builds its CPU
    communication op for the include paths of the interpreter that loads it, and a .venv reached through a
    symlink would otherwise show two (the script's shebang and the symlinked path) and rebuild the op, under a
    lock every run waits on, each time one-process and launched runs alternate."""
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--master_port",
            str(port or free_port())]


def train_command(nproc: int, config: str, overrides: list[str], port: int | None = None) -> list[str]:
    """megarank-train in one process, or nproc CPU processes through the DeepSpeed launcher (on `port`)."""
    if nproc == 1:
        return [sys.executable, "-m", "megarank.train", config, *overrides]
    return [*deepspeed_launcher(nproc, port), "--module", "megarank.train", config, *overrides]


# The tiny ViT on 8×8 digits.
VIT_TINY = ["model.n_layers=2", "model.d_model=32", "model.n_heads=4", "train.micro_batch=4", "train.global_batch=16",
            "optim.warmup_steps=2", "train.eval_every=0", "train.progress=false", "train.precision=fp32",
            "data.augment=true"]  # the seeded crops are part of what resume must reproduce


def run_training(run_dir: Path, corpus: Path | None, *extra: str, nproc: int = 1,
                 config: str = "configs/default.yaml", tiny: list[str] = TINY, check: bool = True,
                 timeout: int = 300, port: int | None = None) -> subprocess.CompletedProcess:
    data = [f"data.path={corpus}"] if corpus else []
    overrides = [*tiny, *data, f"train.run_dir={run_dir}", *extra]
    proc = subprocess.run(train_command(nproc, config, overrides, port), cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_steps(run_dir: Path) -> list[int]:
    """The step of every training record, in file order (validation and rank records are separate)."""
    return [r["step"] for r in read_metrics(run_dir) if "loss" in r]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}
