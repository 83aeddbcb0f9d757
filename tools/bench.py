"""`make bench`: megarank's speed and memory in one call, on whatever this machine has (GPU or CPU).

    python tools/bench.py [--json runs/bench.json] [--steps 30] [--config CONFIG] [OVERRIDE ...]

1. Attention kernels: forward + backward of every backend that can run here (flash_attn, SDPA, the math
   reference) on one causal attention of GPT-2-small shape (GPU: batch 8, 12 heads, 1024 tokens, d_head 64,
   bf16; CPU: batch 2, 4 heads, 256 tokens, fp32), median of timed repeats after warm-up, and the largest
   difference of each backend's output from the math path.
2. Training: the real entry point (the DeepSpeed launcher over every local GPU, or one CPU process) for
   --steps steps of the config — GPT-2 small at 1024 tokens on GPU, the `make pretrain` default on CPU — on the
   embedded corpus; the median over the steps after the first five of tokens/s, step time and MFU, and the
   peak GPU memory, read back from the run's metrics.jsonl.
3. Levers: the same run again with each of torch.compile, activation checkpointing full and selective, and the
   chunked loss (1024 tokens a chunk), and the plain PyTorch loop of megarank/bench/reference_loop.py (same
   model, data and optimizer, no DeepSpeed) — tokens/s, the ratio to that loop, and peak memory (GPU: the
   allocator's peak; CPU: the process's peak resident set, which includes the Python runtime).
4. The matmul ceiling: the FLOP/s of one large matmul measured in the same run (GPU: 8192² bf16; CPU: 2048²
   fp32), and every training row's model FLOP/s per device (PaLM's 6N + 12LTd per token) as a fraction of it —
   besides MFU against the datasheet peak on a GPU.
Prints a table and writes everything, device named, as JSON. Targets are judged from this file's output, never
in timed unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from megarank.bench.gpu_shape import DEFAULT_CONFIG, gpu_overrides
from megarank.bench.memory import estimate_memory
from megarank.config import load_config
from megarank.models.attention import HAS_FLASH_ATTN, attention
from megarank.train.throughput import train_flops_per_token

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 5


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def time_call(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_attention() -> list[dict]:
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    batch, heads, tokens, d_head = (8, 12, 1024, 64) if gpu else (2, 4, 256, 64)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(batch, heads, tokens, d_head, device=device, dtype=dtype, generator=gen)
               .requires_grad_() for _ in range(3))
    reference = attention(q, k, v, causal=True, backend="math").float()
    backends = ["math", "sdpa"] + (["flash"] if HAS_FLASH_ATTN and gpu else [])
    # causal attention: half the score matrix, forward (2 matmuls) + backward (2x forward)
    flops = 3 * 2 * 2 * batch * heads * tokens * tokens * d_head / 2
    rows = []
    for backend in backends:
        def step():
            out = attention(q, k, v, causal=True, backend=backend)
            out.sum().backward()

        seconds = time_call(step, device, repeats=20 if gpu else 5)
        with torch.no_grad():
            error = (attention(q, k, v, causal=True, backend=backend).float() - reference).abs().max().item()
        rows.append({"backend": backend, "shape": [batch, heads, tokens, d_head], "dtype": str(dtype)[6:],
                     "fwd_bwd_ms": seconds * 1e3, "tflops": flops / seconds / 1e12, "max_abs_diff_vs_math": error})
    return rows


def bench_matmul() -> dict:
    """The FLOP/s one large matmul reaches here: the ceiling the training rows are compared against."""
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    n, dtype = (8192, torch.bfloat16) if gpu else (2048, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = time_call(lambda: a @ b, device, repeats=20 if gpu else 5)
    return {"shape": [n, n, n], "dtype": str(dtype)[6:], "tflops": 2 * n**3 / seconds / 1e12}


def bench_training(steps: int, config: str | None, extra: list[str]) -> dict:
    gpu = torch.cuda.is_available()
    default_gpu = gpu_overrides(torch.cuda.device_count()) if gpu else []
    args = [config or DEFAULT_CONFIG, *(default_gpu if config is None else []), *extra]
    with tempfile.TemporaryDirectory(prefix="megarank-bench-") as tmp:
        overrides = [f"train.run_dir={tmp}/run", f"train.max_steps={steps}", "train.eval_every=0",
                     "checkpoint.every=0", "analysis.every=0", "train.progress=false"]
        if gpu:
            # the launcher as `python -m`: works where megarank runs from a checkout without console scripts
            command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus",
                       str(torch.cuda.device_count()), "--module", "megarank.train", *args, *overrides]
        else:
            command = [sys.executable, "-m", "megarank.train", *args, *overrides]
        start = time.perf_counter()
        returncode, stderr, peak_rss_mb = run_measured(command)
        wall = time.perf_counter() - start
        if returncode != 0:
            raise SystemExit(f"error: the training run failed ({returncode}):\n{stderr[-3000:]}")
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        run_config = load_config(str(Path(tmp) / "run" / "config.yaml"))  # vocab_size resolved by the run
        model = run_config.model
    timed = [r for r in records if "loss" in r and r["step"] > WARMUP_STEPS]
    if not timed:
        raise SystemExit(f"error: --steps {steps} leaves no step after the {WARMUP_STEPS} warm-up steps; raise it")
    key = "tokens_per_s" if "tokens_per_s" in timed[0] else "samples_per_s"
    result = {"command": " ".join(args), "steps": steps, "wall_s": wall,
              key: statistics.median(r[key] for r in timed),
              "step_time_s": statistics.median(r["step_time_s"] for r in timed),
              "final_loss": records[-1].get("loss")}
    if key == "tokens_per_s" and model.family == "gpt":
        world = torch.cuda.device_count() if gpu else 1
        result["model_tflops_per_device"] = result[key] * train_flops_per_token(model) / world / 1e12
    if gpu:
        result["mfu"] = statistics.median(r["mfu"] for r in timed)
        result["peak_mem_gb"] = max(r["peak_mem_gb"] for r in timed)
        # tools/memory_estimate.py's formula for the same config: how far the allocator's peak is from it
        estimate = estimate_memory(run_config, torch.cuda.device_count(), bf16=run_config.train.precision != "fp32")
        result["estimated_mem_gb"] = estimate.total_gb
        result["peak_vs_estimate"] = result["peak_mem_gb"] / estimate.total_gb
    else:
        result["peak_rss_mb"] = peak_rss_mb
    return result


def run_measured(command: list[str], stdout=subprocess.DEVNULL) -> tuple[int, str, float]:
    """Run a command; (exit status, stderr, its peak resident memory in MB — a CPU run's peak memory)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, cwd=REPO, stdout=stdout, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read(), usage.ru_maxrss / 1024


LEVERS = {"compile": ["train.compile=true"],
          "ac_full": ["train.activation_checkpointing=full"],
          "ac_selective": ["train.activation_checkpointing=selective"],
          "chunked_loss": ["model.loss_chunk_tokens=1024"]}

REFERENCE_SCRIPT = """
import json, statistics, sys
from megarank.config import load_config
from megarank.bench.reference_loop import train_reference
steps, warmup = int(sys.argv[1]), int(sys.argv[2])
run = train_reference(load_config(sys.argv[3], sys.argv[4:]), steps)
timed = run.step_seconds[warmup:]
print(json.dumps({"tokens_per_s": run.items_per_step / statistics.median(timed), "final_loss": run.losses[-1]}))
"""


def bench_levers(steps: int, config: str | None, extra: list[str], plain: dict) -> list[dict]:
    """Each lever against the plain megarank run and the plain PyTorch loop (CPU: one process, same shape)."""
    args = [config or DEFAULT_CONFIG, *extra]
    rows = []
    if not torch.cuda.is_available():
        with tempfile.TemporaryFile("w+") as out:
            returncode, stderr, peak_rss_mb = run_measured(
                [sys.executable, "-c", REFERENCE_SCRIPT, str(steps), str(WARMUP_STEPS), *args,
                 f"train.max_steps={steps}"], stdout=out)  # the same schedule as the runs
            if returncode != 0:
                raise SystemExit(f"error: the reference loop failed:\n{stderr[-3000:]}")
            out.seek(0)
            reference = json.loads(out.read().strip().splitlines()[-1])
        rows.append({"variant": "plain PyTorch loop", **reference, "peak_rss_mb": peak_rss_mb})
    rows.append({"variant": "megarank", **plain})
    for name, overrides in LEVERS.items():
        rows.append({"variant": name, **bench_training(steps, config, [*extra, *overrides])})
    # the reference loop is fp32 on one device: on GPU (bf16, every GPU) it would not be like for like, so
    # there the ratios are left out rather than made up
    base = rows[0]["tokens_per_s"] if rows[0]["variant"] == "plain PyTorch loop" else None
    for row in rows:
        if base and "tokens_per_s" in row:
            row["vs_reference"] = row["tokens_per_s"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here as well")
    parser.add_argument("--steps", type=int, default=30, help="training steps (the first five are not timed)")
    parser.add_argument("--config", default=None, help="training config (default: GPT-2 small on GPU, the "
                                                        "make-pretrain default on CPU)")
    parser.add_argument("--no-levers", dest="levers", action="store_false",
                        help="skip the compile / activation-checkpointing / reference-loop runs")
    parser.add_argument("overrides", nargs="*", help="config overrides for the training run")
    args = parser.parse_args()
    training = bench_training(args.steps, args.config, args.overrides)
    results = {"device": device_name(), "torch": torch.__version__, "flash_attn": HAS_FLASH_ATTN,
               "matmul": bench_matmul(), "attention": bench_attention(), "training": training}
    if args.levers:
        results["levers"] = bench_levers(args.steps, args.config, args.overrides, training)
    for row in [training, *results.get("levers", [])]:
        if "model_tflops_per_device" in row:
            row["vs_matmul_ceiling"] = row["model_tflops_per_device"] / results["matmul"]["tflops"]
    print(f"device: {results['device']}  torch {results['torch']}  flash_attn installed: {HAS_FLASH_ATTN}")
    mm = results["matmul"]
    print(f"matmul    {mm['dtype']:<8} {'x'.join(map(str, mm['shape'])):<16} {mm['tflops']:.3f} TFLOP/s (the ceiling)")
    for row in results["attention"]:
        print(f"attention {row['backend']:<6} {row['dtype']:<8} {'x'.join(map(str, row['shape'])):<16} "
              f"fwd+bwd {row['fwd_bwd_ms']:8.2f} ms  {row['tflops']:7.2f} TFLOP/s  "
              f"max |diff vs math| {row['max_abs_diff_vs_math']:.1e}")
    train = results["training"]
    print("training  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in train.items()))
    for row in results.get("levers", []):
        memory = (f"peak {row['peak_mem_gb']:.2f} GB (estimate {row['estimated_mem_gb']:.2f})" if "peak_mem_gb" in row
                  else f"peak RSS {row['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in row else "")
        ratio = f"{row['vs_reference']:.3f}x the plain loop" if "vs_reference" in row else ""
        ceiling = f"{row['vs_matmul_ceiling']:.1%} of the matmul ceiling" if "vs_matmul_ceiling" in row else ""
        print(f"lever {row['variant']:<20} {row.get('tokens_per_s', 0):10.0f} tokens/s  {ratio:<24} {ceiling:<30} "
              f"{memory}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
