"""`make bench-rank`: megarank-rank on a random LLaMA-2-7B-shaped safetensors checkpoint, timed.

    python tools/bench_rank.py [--json runs/bench_rank.json] [--tmp DIR] [--keep] [--naive-heads 1] [--repeats 5]

1. Writes a random checkpoint shaped like LLaMA-2-7B (32 layers, d_model 4096, 32 heads, MLP 11008, vocab
   32000; bf16, ~13.5 GB) into a temp dir as sharded safetensors with model.safetensors.index.json. Shards are
   built one at a time, so at most one shard (~0.8 GB) is in memory. Attention weights are fresh N(0, 0.02)
   draws; the other tensors (never read by the analysis) are filled from a shared random pool to save time.
2. Runs the real CLI (`python -m megarank.analysis.cli`) on it in a child process and reports its wall time
   and peak RSS (getrusage of the child): all 32 × 32 × 2 products. Goal: <= 15 s and < 2 GB on 2 CPU cores.
   The child's summary.json gives the split: reading (its reader thread) and computing (CPU seconds summed
   over its worker threads).
3. Floors, in this process (each the minimum of --repeats tries, since a shared machine only ever slows a
   try down): reading all attention tensors (the first pass right after writing may come from the page
   cache; the checkpoint is ~14 GB, so whether it stays cached depends on the machine's memory), and on
   layer 0, single-threaded: converting its four bf16 weights to float32 (convert), the whole factor trick
   (factor, mixed precision and float64), and the GFLOP/s of one projection's per-head Grams as a float64
   GEMM and as a float32 GEMM through oneDNN's bf16 path (the arithmetic floor).
4. On layer 0, times the factor trick for the whole layer and the naive SVD of the d_model × d_model product
   for --naive-heads heads (one naive SVD of a 4096² float64 matrix takes about a minute here, so the layer's
   naive time is that per-product time × 2 products × n_heads); checks both give the same singular values.
Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# torch is imported only inside the functions that need it: the analysis child's peak RSS (ru_maxrss) includes
# whatever its parent held when it was started, so this process stays small until the measurement is taken.
GOAL_WALL_S, GOAL_RSS_MB = 15.0, 2048.0


def llama_config(args: argparse.Namespace) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": args.d_model,
            "intermediate_size": args.ffn, "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
            "num_key_value_heads": args.n_kv_heads, "vocab_size": args.vocab, "rms_norm_eps": 1e-5,
            "torch_dtype": "bfloat16", "tie_word_embeddings": False}


def layer_shapes(args: argparse.Namespace, layer: int) -> dict[str, tuple[int, ...]]:
    d, kv = args.d_model, args.n_kv_heads * (args.d_model // args.n_heads)
    p = f"model.layers.{layer}."
    return {p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (args.ffn, d), p + "mlp.up_proj.weight": (args.ffn, d),
            p + "mlp.down_proj.weight": (d, args.ffn), p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,)}


def write_checkpoint(root: Path, args: argparse.Namespace) -> int:
    """The random model, shard by shard (args.layers_per_shard layers each); returns the tensors' bytes."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    pool = torch.empty(1 << 25, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=gen)

    def filler(shape: tuple[int, ...]) -> torch.Tensor:  # non-attention tensors: slices of the random pool
        n = int(torch.Size(shape).numel())
        start = int(torch.randint(0, pool.numel() - min(n, pool.numel()) + 1, (1,), generator=gen))
        flat = pool[start:start + n] if n <= pool.numel() else pool.repeat(n // pool.numel() + 1)[:n]
        return flat.clone().view(shape)

    groups = [list(range(i, min(i + args.layers_per_shard, args.n_layers)))
              for i in range(0, args.n_layers, args.layers_per_shard)]
    n_shards = len(groups) + 1
    weight_map, total = {}, 0
    for index in range(n_shards):
        shard: dict[str, torch.Tensor] = {}
        if index == 0:  # embeddings, final norm and head in the first shard, like HF's own layout puts them
            shard["model.embed_tokens.weight"] = filler((args.vocab, args.d_model))
            shard["lm_head.weight"] = filler((args.vocab, args.d_model))
            shard["model.norm.weight"] = torch.ones(args.d_model, dtype=torch.bfloat16)
        else:
            for layer in groups[index - 1]:
                for name, shape in layer_shapes(args, layer).items():
                    if "self_attn" in name:
                        shard[name] = torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=gen)
                    elif "layernorm" in name:
                        shard[name] = torch.ones(shape, dtype=torch.bfloat16)
                    else:
                        shard[name] = filler(shape)
        file = f"model-{index + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file(shard, str(root / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in shard.values())
        weight_map.update({name: file for name in shard})
        del shard
        print(f"  wrote {file}", file=sys.stderr, flush=True)
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (root / "config.json").write_text(json.dumps(llama_config(args), indent=1))
    return total


def run_analysis(ckpt: Path, out: Path) -> dict:
    """The CLI in a child process: wall seconds and that child's peak RSS (its own getrusage record, from wait4)."""
    cmd = [sys.executable, "-m", "megarank.analysis.cli", str(ckpt), "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"analysis failed ({proc.returncode}): {stdout}")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "analysis_s": summary["seconds"],  # KiB on Linux
            "timing": summary.get("timing", {}), "float64_gram_products": summary["settings"].get("float64_gram_products"),
            "products": 2 * summary["model"]["n_layers"] * summary["model"]["n_heads"],
            "mean_rank": {p: summary["means"][p]["rank"] for p in ("qk", "ov")}, "stdout": stdout.strip()}


def floors(ckpt: Path, repeats: int) -> dict:
    """The split and the floors (module docstring, step 3), in seconds unless named otherwise."""
    import torch

    from megarank.analysis.readers.hf_safetensors import SafetensorsModel
    from megarank.analysis.spectra import _exact_bf16_matmul, layer_spectra

    def best(fn, n: int = repeats, clock=time.perf_counter) -> float:
        times = []
        for _ in range(n):
            start = clock()
            fn()
            times.append(clock() - start)
        return min(times)

    with SafetensorsModel(ckpt) as source:
        info = source.info
        start = time.perf_counter()
        attention_bytes = 0
        for shards in source.layers():  # the reader maps the files; cloning brings every byte into memory
            for shard in shards:
                attention_bytes += sum(w.clone().numel() * w.element_size() for w in (shard.q, shard.k, shard.v, shard.o))
        read_all = time.perf_counter() - start
        read_layer = best(lambda: [w.clone() for w in vars(next(iter(source.layers()))[0]).values()
                                   if isinstance(w, torch.Tensor)])
        shard = next(iter(source.layers()))[0]
    weights = (shard.q, shard.k, shard.v, shard.o)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker of the analysis runs
    try:
        buffers = [torch.empty(w.shape) for w in weights]
        convert = best(lambda: [b.copy_(w) for b, w in zip(buffers, weights)], clock=time.thread_time)
        mixed = best(lambda: layer_spectra(*weights, info.d_head), clock=time.thread_time)
        exact = best(lambda: layer_spectra(*weights, info.d_head, mixed=False), clock=time.thread_time)
        heads64 = buffers[0].double().view(-1, info.d_head, info.d_model)
        heads32 = buffers[0].view(-1, info.d_head, info.d_model)
        flop = 2 * heads64.shape[0] * info.d_head ** 2 * info.d_model
        gemm64 = best(lambda: heads64 @ heads64.mT, clock=time.thread_time)
        with _exact_bf16_matmul():
            gemm_bf16 = best(lambda: heads32 @ heads32.mT, clock=time.thread_time)
    finally:
        torch.set_num_threads(saved)
    return {"attention_gb": attention_bytes / 1e9, "read_all_attention_s": read_all,
            "read_all_attention_gb_per_s": attention_bytes / 1e9 / read_all, "read_layer_s": read_layer,
            "layer0_cpu_s": {"convert_bf16_to_f32": convert, "factor_mixed": mixed, "factor_float64": exact},
            "gram_gemm_gflop_per_s": {"float64": flop / gemm64 / 1e9, "float32_via_bf16": flop / gemm_bf16 / 1e9},
            "projected_layers_cpu_s": {"mixed": mixed * info.n_layers, "float64": exact * info.n_layers},
            "repeats": repeats}


def naive_vs_trick(ckpt: Path, naive_heads: int) -> dict:
    """Layer 0: the factor trick for all heads, against the naive product SVD for the first naive_heads."""
    import torch

    from megarank.analysis.readers.hf_safetensors import SafetensorsModel
    from megarank.analysis.spectra import layer_spectra

    with SafetensorsModel(ckpt) as source:
        info = source.info
        shard = next(iter(source.layers()))[0]
    dh = info.d_head
    start = time.perf_counter()
    trick = layer_spectra(shard.q, shard.k, shard.v, shard.o, dh)
    trick_s = time.perf_counter() - start
    q, k, v, o = (w.double() for w in (shard.q, shard.k, shard.v, shard.o))
    group = info.n_heads // info.n_kv_heads
    times, worst = [], 0.0
    for h in range(naive_heads):
        g = h // group
        products = {"qk": q[h * dh:(h + 1) * dh].T @ k[g * dh:(g + 1) * dh],  # (d_model, d_model)
                    "ov": o[:, h * dh:(h + 1) * dh] @ v[g * dh:(g + 1) * dh]}
        for name, m in products.items():
            start = time.perf_counter()
            sv = torch.linalg.svdvals(m)
            times.append(time.perf_counter() - start)
            ref = trick[name].sv[h]
            worst = max(worst, float((sv[:dh] - ref).abs().max() / ref[0]), float(sv[dh:].max() / ref[0]))
    per_product = sum(times) / len(times)
    naive_layer = per_product * 2 * info.n_heads
    return {"trick_layer_s": trick_s, "naive_per_product_s": per_product, "naive_products_timed": len(times),
            "naive_layer_s_extrapolated": naive_layer, "speedup": naive_layer / trick_s,
            "max_rel_sv_difference": worst}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("runs/bench_rank.json"), help="where to write results")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temp checkpoint (needs ~14 GB)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and the analysis output")
    parser.add_argument("--naive-heads", type=int, default=1, help="heads of layer 0 to time the naive SVD on")
    parser.add_argument("--repeats", type=int, default=5, help="tries per floor measurement (the minimum is kept)")
    parser.add_argument("--n-layers", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--n-heads", type=int, default=32)
    parser.add_argument("--n-kv-heads", type=int, default=32)
    parser.add_argument("--ffn", type=int, default=11008)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--layers-per-shard", type=int, default=2)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="megarank-bench-rank-", dir=args.tmp))
    ckpt, out = work / "model", work / "analysis"
    ckpt.mkdir()
    try:
        print(f"writing a random {args.n_layers}-layer, d_model {args.d_model} checkpoint to {ckpt}",
              file=sys.stderr, flush=True)
        start = time.perf_counter()
        writer = multiprocessing.get_context("spawn").Process(target=write_checkpoint, args=(ckpt, args))
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise SystemExit(f"writing the checkpoint failed (exit {writer.exitcode})")
        write_s = time.perf_counter() - start
        size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        analysis = run_analysis(ckpt, out)
        floor = floors(ckpt, args.repeats)
        naive = naive_vs_trick(ckpt, args.naive_heads)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {"shape": {k: getattr(args, k) for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn",
                                                      "vocab")},
              "checkpoint_gb": size / 1e9, "write_s": write_s, "cpu_cores": os.cpu_count(),
              "load_average": os.getloadavg(), "analysis": analysis, "floors": floor, "naive": naive,
              "goal": {"wall_s": GOAL_WALL_S, "peak_rss_mb": GOAL_RSS_MB},
              "goal_met": analysis["wall_s"] <= GOAL_WALL_S and analysis["peak_rss_mb"] < GOAL_RSS_MB}
    timing, cpu = analysis["timing"], floor["layer0_cpu_s"]
    rows = [("checkpoint", f"{size / 1e9:.1f} GB bf16, written in {write_s:.0f} s"),
            ("products analysed", f"{analysis['products']}"),
            ("wall (CLI, incl. startup)", f"{analysis['wall_s']:.1f} s  (goal <= {GOAL_WALL_S:.0f} s)"),
            ("split (analysis)", f"read {timing.get('read_s', float('nan')):.1f} s (reader thread), compute "
                                 f"{timing.get('compute_cpu_s', float('nan')):.1f} CPU s over "
                                 f"{timing.get('workers', '?')} workers; {analysis['float64_gram_products']} "
                                 "products in float64"),
            ("floor: read attention", f"{floor['attention_gb']:.1f} GB in {floor['read_all_attention_s']:.1f} s "
                                      f"({floor['read_all_attention_gb_per_s']:.2f} GB/s)"),
            ("floor: layer 0, 1 thread", f"convert {cpu['convert_bf16_to_f32']:.3f} s, factor {cpu['factor_mixed']:.3f}"
                                         f" s mixed / {cpu['factor_float64']:.3f} s float64 (CPU s)"),
            ("floor: Gram GEMM, 1 thread", f"{floor['gram_gemm_gflop_per_s']['float64']:.0f} GFLOP/s float64, "
                                           f"{floor['gram_gemm_gflop_per_s']['float32_via_bf16']:.0f} GFLOP/s "
                                           "float32 (bf16 path)"),
            ("load average", " ".join(f"{x:.1f}" for x in result["load_average"])),
            ("peak RSS", f"{analysis['peak_rss_mb']:.0f} MB  (goal < {GOAL_RSS_MB:.0f} MB)"),
            ("layer 0, factor trick", f"{naive['trick_layer_s']:.2f} s for {2 * args.n_heads} products"),
            ("layer 0, naive SVD", f"{naive['naive_per_product_s']:.1f} s/product x {2 * args.n_heads} = "
                                   f"{naive['naive_layer_s_extrapolated']:.0f} s ({naive['naive_products_timed']} "
                                   "timed)"),
            ("speed-up", f"{naive['speedup']:.0f}x"),
            ("max |σ_naive − σ_trick| / σ_max", f"{naive['max_rel_sv_difference']:.1e}")]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
