"""Expected memory per GPU for an experiment at a world size: model states by ZeRO stage, activations, logits.

usage: python tools/memory_estimate.py CONFIG --world-size 16 [key=value ...] [--no-flash] [--fp32]
"""

from __future__ import annotations

import argparse
import sys

from megarank.bench.memory import estimate_memory
from megarank.config import load_config
from megarank.errors import MegarankError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--world-size", type=int, required=True, help="total GPUs (nodes × GPUs per node)")
    parser.add_argument("--no-flash", action="store_true", help="attention without flash (stores the scores)")
    parser.add_argument("--fp32", action="store_true", help="fp32 training instead of bf16")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    est = estimate_memory(cfg, args.world_size, bf16=not args.fp32, flash_attention=not args.no_flash)
    tp = cfg.parallel.tp
    print(f"model: {est.params_total / 1e6:.1f}M parameters, {est.params_per_rank / 1e6:.1f}M per TP rank "
          f"(tp={tp}, dp={args.world_size // tp}, zero={cfg.zero.stage}, micro_batch={cfg.train.micro_batch})")
    print(f"  model states  {est.model_states_gb:6.2f} GB")
    print(f"  activations   {est.activations_gb:6.2f} GB")
    print(f"  logits        {est.logits_gb:6.2f} GB")
    print(f"  total         {est.total_gb:6.2f} GB per GPU (plus framework workspace, ~1-2 GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
