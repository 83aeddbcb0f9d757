"""`megarank-eval`: perplexity of a GPT checkpoint over every token of a split (Table 1; docs/paper.md,
"### lm-sweep (Table 1, Fig 3)").

    megarank-eval PATH [--split val|test] [--data DIR] [--out FILE] [--batch-size 8] [--device cpu]
                       [--weights module|fp32] [--no-progress]

PATH is a megarank run dir, its checkpoint dir or a global_step<N> tag (the newest complete one for the first
two), trained at any TP size, DP size or ZeRO stage: no process group is needed. --data defaults to what the
run trained on. The result goes to --out, by default <run dir>/eval_<split>.json, the run dir being PATH itself
or, for a checkpoint dir or tag, the directory holding the checkpoint dir (another tag of the same run writes
the same file: pass --out to keep both). Its keys: split, tokens (N − 1 predicted tokens), loss (mean NLL,
nats), ppl, checkpoint (the tag read), step, data (the split's shard dir), seq_len, weights, layout.
Thin: parse, check, evaluate (perplexity.py), write atomically. A user error prints one line, `error: ...`, on
stderr and exits 2, with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from megarank.ckpt.resolve import looks_like_checkpoint, resolve_tag
from megarank.errors import MegarankError
from megarank.files import atomic_write_json
from megarank.evaluation.perplexity import SPLITS, evaluate_checkpoint


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megarank-eval",
                                     description="Perplexity of a GPT checkpoint over every token of a split.")
    parser.add_argument("path", type=Path, help="run dir, checkpoint dir or global_step<N> tag")
    parser.add_argument("--split", choices=SPLITS, default="test", help="which split (default: test)")
    parser.add_argument("--data", type=Path, default=None,
                        help="data dir holding <split>/ token shards (default: the data the run trained on)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file to write (default: <run dir>/eval_<split>.json)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, cuda:1)")
    parser.add_argument("--weights", choices=("module", "fp32"), default="module",
                        help="the module's weights as trained (default) or ZeRO's fp32 master copy")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def default_out(path: Path, split: str) -> Path:
    """<run dir>/eval_<split>.json: PATH when it is a run dir, else the parent of the checkpoint dir."""
    tag_dir = resolve_tag(path)
    designates_checkpoints = path.resolve() in (tag_dir.resolve(), tag_dir.parent.resolve())
    run_dir = tag_dir.parent.parent if designates_checkpoints else path
    return run_dir / f"eval_{split}.json"


def main(argv: list[str] | None = None) -> int:
    """megarank-eval PATH [--split val|test] [--data DIR] [--out FILE] ..."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        if args.batch_size < 1:
            raise MegarankError(f"--batch-size must be at least 1, got {args.batch_size}")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise MegarankError(f"--device {args.device}: no CUDA device is available; use --device cpu")
        if not looks_like_checkpoint(args.path):
            raise MegarankError(f"'{args.path}' is not a megarank checkpoint: pass a run dir, its checkpoint dir "
                                "or a global_step<N> tag")
        out = args.out if args.out is not None else default_out(args.path, args.split)
        if out.is_dir():
            raise MegarankError(f"--out '{out}' is a directory; pass a file name such as {out / 'eval.json'}")
        result = evaluate_checkpoint(args.path, split=args.split, data=args.data, batch_size=args.batch_size,
                                     device=args.device, weights=args.weights, progress=not args.no_progress)
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"{result['checkpoint']} (step {result['step']}), {result['split']} split of {result['data']}: "
          f"{result['tokens']} tokens, loss {result['loss']:.4f}, ppl {result['ppl']:.2f}")
    print(f"wrote {out}")
    return 0
