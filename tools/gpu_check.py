"""`make gpu-check`: every GPU-only path of megarank checked and measured in one call, on every local GPU.

    python tools/gpu_check.py [--out runs/gpu_check] [--steps 200] [--bench-steps 30] [--stages train,rank]

Stages (each runs even when an earlier one failed, unless it needs that one's output):
1. fused_adam  — DeepSpeed's FusedAdam CUDA op built (JIT) and loaded; if it fails, the rest train with
                 optim.implementation=torch so they still measure, and the check fails.
2. cuda_tests  — tests/gpu/: attention kernels (SDPA flash and memory-efficient, flash_attn where installed)
                 against the math path in bf16 and fp16; the chunked loss and activation checkpointing on CUDA.
3. train       — GPT-2 small at 1024 tokens in bf16 through the DeepSpeed launcher (NCCL), a checkpoint half-way;
                 the loss must fall; the divergence guard is on (a non-finite step would end the run).
   train_llama — the LLaMA block at that size (GQA, RMSNorm, SwiGLU, QK-norm) for half the steps; the loss
                 must fall.
4. resume      — a second run resumed from the half-way checkpoint: its first loss equals the straight run's at
                 that step (the same weights, a deterministic forward); the rest are reported beside it.
5. tp2         — with 2 or more GPUs: the same run at TP=2, its losses against TP=1's.
6. bench       — tools/bench.py: tokens/s, MFU against the datasheet and the measured matmul ceiling, each lever,
                 peak memory against tools/memory_estimate.py's formula.
7. rank        — megarank-rank of the trained checkpoint on the GPU (--device cuda) equal to the CPU result within
                 the accuracy the rank analysis promises (analysis/spectra.py's MIXED_TOL of each σ_max).
8. eval        — megarank-eval of the trained checkpoint on the GPU.
Writes report.json and report.md (GPU, driver, CUDA, torch, DeepSpeed, flash_attn named) to --out; exits 1 when
any stage failed. Without a GPU: one line, exit 2. --stages runs only the stages named (rank, resume and eval
need train in the same call), e.g. to rerun a failed one; the report names the stages that were left out.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from megarank.bench.gpu_report import write_report
from megarank.analysis.spectra import MIXED_TOL
from megarank.bench.gpu_shape import DEFAULT_CONFIG, LLAMA_CONFIG, LLAMA_OVERRIDES, gpu_overrides

REPO = Path(__file__).resolve().parents[1]
# a loss that falls: the mean of the last ten logged steps below this fraction of the first five's
LOSS_FALL = 0.7
# in the order they run
STAGES = ("fused_adam", "cuda_tests", "train", "train_llama", "resume", "tp2", "bench", "rank", "eval")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True)
    return {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
            "driver": driver.stdout.strip().splitlines()[0] if driver.returncode == 0 else "unknown",
            "cuda": torch.version.cuda, "torch": torch.__version__, "deepspeed": _version("deepspeed"),
            "flash_attn": _version("flash_attn") or _version("flash-attn"), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def run(command: list[str], log: Path, timeout: int) -> None:
    """Run a command from the repo root, output to log; a non-zero exit raises with the log's tail."""
    with open(log, "w") as out:
        proc = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(command[:6])} ...` exited {proc.returncode}; log {log}:\n"
                           + log.read_text()[-4000:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(run_dir: Path, overrides: list[str], log: Path, tp: int = 1, config: str = DEFAULT_CONFIG) -> list[dict]:
    """GPT-2 small (or the config given, at GPT-2 small's size) on every local GPU through the DeepSpeed
    launcher; returns the run's metrics records."""
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(torch.cuda.device_count()),
               "--master_port", str(free_port()), "--module", "megarank.train", config,
               *gpu_overrides(torch.cuda.device_count() // tp), f"parallel.tp={tp}", f"train.run_dir={run_dir}",
               "train.progress=false", *overrides]
    run(command, log, timeout=600)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def loss_fell(by_step: dict[int, float], what: str) -> tuple[float, float]:
    """The mean loss of the first five and of the last ten logged steps; a RuntimeError naming `what` unless the
    last ten's is below LOSS_FALL times the first five's."""
    steps = sorted(by_step)
    first, last = float(np.mean([by_step[s] for s in steps[:5]])), float(np.mean([by_step[s] for s in steps[-10:]]))
    if not last < LOSS_FALL * first:
        raise RuntimeError(f"{what} did not fall: first five steps {first:.3f}, last ten {last:.3f}")
    return first, last


class Check:
    """The stages' results, each recorded as it ends so the report holds whatever ran."""

    def __init__(self, out: Path, steps: int, bench_steps: int, env: dict, selected: list[str]):
        self.out, self.steps, self.bench_steps, self.env = out, steps, bench_steps, env
        self.left_out = [name for name in STAGES if name not in selected]
        self.stages: dict[str, dict] = {}
        self.optim: list[str] = []  # optim.implementation=torch when FusedAdam cannot be built

    def stage(self, name: str, fn) -> None:
        start = time.perf_counter()
        print(f"[gpu-check] {name} ...", flush=True)
        try:
            result = {"ok": True, **fn()}
        except Exception as err:  # a failed stage is reported, and the others still run
            detail = str(err) if isinstance(err, RuntimeError) else traceback.format_exc()
            result = {"ok": False, "summary": f"{type(err).__name__}", "error": detail}
        result["seconds"] = time.perf_counter() - start
        self.stages[name] = result
        print(f"[gpu-check] {name}: {'pass' if result['ok'] else 'FAIL'} ({result['seconds']:.0f} s) "
              f"{result.get('summary', '')}", flush=True)
        self.report(complete=False)  # a check cut short still leaves what it measured

    def not_run(self, name: str, why: str, ok: bool) -> None:
        self.stages[name] = {"ok": ok, "seconds": 0.0, "summary": why}

    def report(self, complete: bool) -> tuple[Path, Path]:
        stages = {name: {k: (len(v) if k == "losses" else v) for k, v in stage.items()}  # losses: in metrics.jsonl
                  for name, stage in self.stages.items()}
        return write_report({"environment": self.env, "stages": stages, "left_out": self.left_out, "complete": complete,
                             "ok": complete and all(stage["ok"] for stage in stages.values())}, self.out)

    # --- stages -----------------------------------------------------------------------------------------------
    def fused_adam(self) -> dict:
        from deepspeed.ops.op_builder import FusedAdamBuilder

        from megarank.train.engine import arch_list_deepspeed_can_parse

        arch_list_deepspeed_can_parse()  # as a training run does before DeepSpeed builds the op
        try:
            FusedAdamBuilder().load()
        except Exception:
            self.optim = ["optim.implementation=torch"]
            raise
        return {"summary": f"DeepSpeed FusedAdam built and loaded (TORCH_CUDA_ARCH_LIST="
                           f"{os.environ.get('TORCH_CUDA_ARCH_LIST', 'unset')})"}

    def cuda_tests(self) -> dict:
        junit = self.out / "cuda_tests.xml"
        log = self.out / "cuda_tests.log"
        proc = subprocess.run([sys.executable, "-m", "pytest", "tests/gpu", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={junit}"], cwd=REPO, capture_output=True, text=True, timeout=600)
        log.write_text(proc.stdout + proc.stderr)
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if proc.returncode != 0:
            raise RuntimeError(f"tests/gpu: {tail}\n{proc.stdout[-4000:]}")
        return {"summary": tail}

    def train(self) -> dict:
        half = self.steps // 2
        records = train(self.out / "train", [f"train.max_steps={self.steps}", f"checkpoint.every={half}",
                                             f"train.eval_every={self.steps}", f"analysis.every={half}",
                                             *self.optim], self.out / "train.log")
        by_step = losses(records)
        first, last = loss_fell(by_step, "the loss")
        timed = [r for r in records if "tokens_per_s" in r and r["step"] > 5]
        figures = {"first_loss": float(first), "last_loss": float(last),
                   "tokens_per_s": float(np.median([r["tokens_per_s"] for r in timed])),
                   "mfu": float(np.median([r["mfu"] for r in timed])),
                   "peak_mem_gb": max(r["peak_mem_gb"] for r in timed),
                   "val_loss": next((r["val_loss"] for r in reversed(records) if "val_loss" in r), None),
                   "loss_spikes": sum(1 for r in records if r.get("warning") == "loss_spike"), "losses": by_step}
        figures["summary"] = (f"{self.steps} steps: loss {first:.2f} -> {last:.2f}, "
                              f"{figures['tokens_per_s']:,.0f} tokens/s, MFU {figures['mfu']:.1%}, "
                              f"peak {figures['peak_mem_gb']:.1f} GB")
        return figures

    def train_llama(self) -> dict:
        """The LLaMA block (GQA through SDPA's enable_gqa, RMSNorm, SwiGLU, QK-norm) at GPT-2 small's size."""
        steps = self.steps // 2
        records = train(self.out / "llama", [*LLAMA_OVERRIDES, f"train.max_steps={steps}",
                                             "checkpoint.every=0", "train.eval_every=0", "analysis.every=0",
                                             *self.optim], self.out / "llama.log", config=LLAMA_CONFIG)
        first, last = loss_fell(losses(records), "the LLaMA loss")
        timed = [r for r in records if "tokens_per_s" in r and r["step"] > 5]
        tokens_per_s = float(np.median([r["tokens_per_s"] for r in timed]))
        return {"first_loss": float(first), "last_loss": float(last), "tokens_per_s": tokens_per_s,
                "summary": f"{steps} steps: loss {first:.2f} -> {last:.2f}, {tokens_per_s:,.0f} tokens/s"}

    def resume(self) -> dict:
        half = self.steps // 2
        tag = self.out / "train" / "checkpoints" / f"global_step{half}"
        records = train(self.out / "resume", [f"train.max_steps={self.steps}", "checkpoint.every=0",
                                              f"train.eval_every={self.steps}", "analysis.every=0",
                                              f"train.resume={tag}", *self.optim], self.out / "resume.log")
        straight = {int(k): v for k, v in self.stages["train"]["losses"].items()}
        resumed = losses(records)
        first = min(resumed)
        if first != half + 1:
            raise RuntimeError(f"the resumed run started at step {first}, not {half + 1}")
        diffs = [abs(resumed[s] - straight[s]) for s in sorted(resumed)]
        figures = {"first_step_diff": diffs[0], "max_diff": max(diffs), "steps": len(diffs)}
        # the first resumed loss is a forward pass of the restored weights: equal up to float printing
        if diffs[0] > 1e-6:
            raise RuntimeError(f"step {half + 1}'s loss after the resume differs by {diffs[0]:.2e} from the "
                               "straight run's")
        figures["summary"] = (f"step {half + 1} equal to the straight run (diff {diffs[0]:.1e}); max diff over "
                              f"{len(diffs)} steps {max(diffs):.1e} (GPU kernels are not bitwise deterministic)")
        return figures

    def tp2(self) -> dict:
        steps = 20
        tp1 = losses(train(self.out / "tp1", [f"train.max_steps={steps}", "checkpoint.every=0", "analysis.every=0",
                                              "train.eval_every=0", *self.optim], self.out / "tp1.log"))
        tp2 = losses(train(self.out / "tp2", [f"train.max_steps={steps}", "checkpoint.every=0", "analysis.every=0",
                                              "train.eval_every=0", *self.optim], self.out / "tp2.log", tp=2))
        diff = max(abs(tp1[s] - tp2[s]) for s in tp1)
        if diff > 5e-2:
            raise RuntimeError(f"TP=2 losses differ from TP=1's by up to {diff:.3f} over {steps} steps")
        return {"max_diff": diff, "summary": f"TP=2 against TP=1 over {steps} steps: max loss diff {diff:.1e}"}

    def bench(self) -> dict:
        out = self.out / "bench.json"
        run([sys.executable, "tools/bench.py", "--json", str(out), "--steps", str(self.bench_steps), *self.optim],
            self.out / "bench.log", timeout=900)
        results = json.loads(out.read_text())
        train = results["training"]
        return {"results": results,
                "summary": (f"{train['tokens_per_s']:,.0f} tokens/s, MFU {train['mfu']:.1%}, "
                            f"{train.get('vs_matmul_ceiling', float('nan')):.1%} of the measured matmul ceiling, "
                            f"peak {train['peak_mem_gb']:.1f} GB vs estimate {train['estimated_mem_gb']:.1f} GB")}

    def rank(self) -> dict:
        checkpoint = self.out / "train" / "checkpoints"
        timings = {}
        for device in ("cpu", "cuda"):
            start = time.perf_counter()
            run([sys.executable, "-m", "megarank.analysis.cli", str(checkpoint), "--out", str(self.out / f"rank_{device}"),
                 "--device", device, "--no-plots", "--no-progress"], self.out / f"rank_{device}.log", timeout=600)
            timings[device] = time.perf_counter() - start
        cpu, gpu = (np.load(self.out / f"rank_{d}" / "singular_values.npz") for d in ("cpu", "cuda"))
        worst = max(float(np.max(np.abs(cpu[p] - gpu[p]) / np.maximum(np.abs(cpu[p]).max(), 1e-30)))
                    for p in cpu.files)
        rank_columns = [[row["rank"] for row in csv.DictReader(open(self.out / f"rank_{d}" / "ranks.csv"))]
                        for d in ("cpu", "cuda")]
        # CPU and CUDA take different paths (CPU: float32 Grams of bf16 weights where that is exact enough; CUDA:
        # float64), each accurate to MIXED_TOL·σ_max, so that is what equal means here
        if worst > MIXED_TOL or rank_columns[0] != rank_columns[1]:
            raise RuntimeError(f"megarank-rank on CUDA differs from CPU: singular values by {worst:.1e} (relative), "
                               f"ranks {'equal' if rank_columns[0] == rank_columns[1] else 'differ'}")
        return {"sv_max_rel_diff": worst, "seconds_cpu": timings["cpu"], "seconds_cuda": timings["cuda"],
                "summary": f"CUDA equal to CPU (singular values within {worst:.1e} relative, ranks equal); "
                           f"{timings['cuda']:.0f} s on CUDA, {timings['cpu']:.0f} s on CPU"}

    def eval(self) -> dict:
        out = self.out / "eval_val.json"
        run([sys.executable, "-c", "import sys; from megarank.evaluation.cli import main; sys.exit(main())",
             str(self.out / "train"), "--split", "val", "--device", "cuda", "--out", str(out), "--no-progress"],
            self.out / "eval.log", timeout=600)
        result = json.loads(out.read_text())
        return {"loss": result["loss"], "ppl": result["ppl"], "tokens": result["tokens"],
                "summary": f"val loss {result['loss']:.4f} (ppl {result['ppl']:.2f}) over {result['tokens']:,} tokens"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs/gpu_check", help="report and logs go here")
    parser.add_argument("--steps", type=int, default=200, help="steps of the training stage (checkpoint half-way)")
    parser.add_argument("--bench-steps", type=int, default=30, help="steps of each make-bench run")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated stages to run (default: all of {','.join(STAGES)})")
    args = parser.parse_args()
    selected = [name for name in args.stages.split(",") if name]
    unknown = [name for name in selected if name not in STAGES]
    if unknown or not selected:
        print(f"make gpu-check: unknown stage {', '.join(unknown) or '(none)'} in --stages; choose from "
              f"{','.join(STAGES)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("make gpu-check: no CUDA GPU is visible on this machine (torch.cuda.is_available() is False); run it "
              "on a GPU node", file=sys.stderr)
        return 2
    if args.steps < 20:
        print(f"make gpu-check: --steps {args.steps} is too few to see the loss fall; use 20 or more", file=sys.stderr)
        return 2
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.steps, args.bench_steps, environment(), selected)
    for name in STAGES:
        needs_train = name in ("resume", "rank", "eval")
        if name not in selected:
            continue
        if name == "tp2" and torch.cuda.device_count() < 2:
            check.not_run("tp2", "not run: one GPU (TP=2 against TP=1 needs two)", ok=True)
        elif needs_train and not check.stages.get("train", {}).get("ok"):
            why = "the training stage failed" if "train" in selected else "train was not among --stages"
            check.not_run(name, f"not run: {why}", ok=False)
        else:
            check.stage(name, getattr(check, name))
    json_path, md_path = check.report(complete=True)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0 if json.loads(json_path.read_text())["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
