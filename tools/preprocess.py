"""Tokenize a text data set into token shards for training (out/train, and out/val with --val-fraction).

    python tools/preprocess.py 'pile/*.jsonl.zst' --tokenizer tok/pile32k.model --out data/pile --val-fraction 0.001
"""

from __future__ import annotations

import argparse
import json
import sys

from megarank.data.preprocess import preprocess
from megarank.errors import MegarankError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="file, directory, glob (jsonl, jsonl.zst, json, parquet, txt) or hub name")
    parser.add_argument("--tokenizer", required=True, help="sentencepiece .model file")
    parser.add_argument("--out", required=True, help="output directory; must not exist or be empty")
    parser.add_argument("--text-key", default="text", help="column holding the documents")
    parser.add_argument("--split", default="train", help="split of the source to read")
    parser.add_argument("--val-fraction", type=float, default=0.0, help="fraction of documents held out as out/val")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val document split")
    parser.add_argument("--num-proc", type=int, default=1, help="tokenizer processes")
    parser.add_argument("--shard-tokens", type=int, default=50_000_000, help="tokens per shard file")
    args = parser.parse_args(argv)
    try:
        summary = preprocess(
            args.source,
            args.tokenizer,
            args.out,
            text_key=args.text_key,
            split=args.split,
            val_fraction=args.val_fraction,
            seed=args.seed,
            num_proc=args.num_proc,
            shard_tokens=args.shard_tokens,
        )
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
