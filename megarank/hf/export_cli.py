"""`megarank-export`: a megarank GPT checkpoint as a Hugging Face directory (megarank/hf/export.py).

    megarank-export PATH --out DIR [--tokenizer FILE] [--weights module|fp32]

PATH is a run dir, its checkpoint dir or a global_step<N> tag (the newest complete one for the first two), at
any TP size, DP size or ZeRO stage; no process group is needed. DIR must not exist or be empty. A user error
prints one line, `error: ...`, on stderr and exits 2, with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megarank.errors import MegarankError
from megarank.hf.export import export_checkpoint


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megarank-export",
                                     description="Write a GPT checkpoint as a Hugging Face model directory.")
    parser.add_argument("path", type=Path, help="run dir, checkpoint dir or global_step<N> tag")
    parser.add_argument("--out", type=Path, required=True, help="directory to write (absent or empty)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="the run's SentencePiece .model (default: found from the run's data config)")
    parser.add_argument("--weights", choices=("module", "fp32"), default="module",
                        help="the module's weights as trained (default) or ZeRO's fp32 master copy")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        summary = export_checkpoint(args.path, args.out, tokenizer=args.tokenizer, weights=args.weights)
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    layout = summary["layout"]
    print(f"{summary['checkpoint']} (step {summary['step']}, tp={layout['tp']} dp={layout['dp']} "
          f"zero={layout['zero_stage']}) -> {summary['out']} ({summary['family']}, tokenizer {summary['tokenizer']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
